#include "runtime/cpu_backend.h"

#include "runtime/sampler.h"

namespace uberlm {

CpuBackend::CpuBackend(const Model& model, int max_slots) : model_(model), decoder_(model.config, model.weights) {
  for (int i = 0; i < max_slots; ++i) caches_.push_back(decoder_.new_cache());
}

void CpuBackend::release(int slot) { caches_.at(slot) = decoder_.new_cache(); }

ForwardResult CpuBackend::forward(const ForwardBatch& batch) { return run(batch, nullptr); }

ForwardResult CpuBackend::forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) {
  return run(batch, &snapshot);
}

ForwardResult CpuBackend::run(const ForwardBatch& batch, ForwardSnapshot* snapshot) {
  ForwardResult result = decoder_.forward(batch, caches_, snapshot);
  if (batch.argmax_only) result.argmax = argmax_rows(result.logits, result.rows, model_.config.vocab_size);
  return result;
}

}  // namespace uberlm
