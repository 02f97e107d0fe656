#include "runtime/cpu_backend.h"

#include "runtime/sampler.h"

namespace uberlm {

CpuBackend::CpuBackend(const Model& model, int max_slots, int max_prefix_snapshots)
    : model_(model), decoder_(model.config, model.weights), snapshots_(max_prefix_snapshots) {
  for (int i = 0; i < max_slots; ++i) caches_.push_back(decoder_.new_cache());
}

void CpuBackend::release(int slot) { caches_.at(slot) = decoder_.new_cache(); }

void CpuBackend::save_prefix(int slot, int snapshot) { snapshots_.at(snapshot) = caches_.at(slot); }

void CpuBackend::restore_prefix(int snapshot, int slot) { caches_.at(slot) = snapshots_.at(snapshot); }

void CpuBackend::drop_prefix(int snapshot) { snapshots_.at(snapshot) = CpuSequenceCache{}; }

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
