#include "runtime/cpu_backend.h"

namespace uberlm {

CpuBackend::CpuBackend(const Model& model, int max_slots) : model_(model), decoder_(model.config, model.weights) {
  for (int i = 0; i < max_slots; ++i) caches_.push_back(decoder_.new_cache());
}

void CpuBackend::release(int slot) { caches_.at(slot) = decoder_.new_cache(); }

ForwardResult CpuBackend::forward(const ForwardBatch& batch) { return decoder_.forward(batch, caches_); }

}  // namespace uberlm
