#include "runtime/cpu_backend.h"

#include "runtime/sampler.h"

namespace uberlm {

CpuBackend::CpuBackend(const Model& model, int max_slots, int max_prefix_snapshots)
    : model_(model), decoder_(model.config, model.weights), slots_(decoder_, max_slots, max_prefix_snapshots) {}

ForwardResult CpuBackend::forward(const ForwardBatch& batch) { return run(batch, nullptr); }

ForwardResult CpuBackend::forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) {
  return run(batch, &snapshot);
}

ForwardResult CpuBackend::run(const ForwardBatch& batch, ForwardSnapshot* snapshot) {
  for (const SequenceChunk& chunk : batch.chunks) check_prefix_save(chunk, slots_.prefix_snapshots(), name());
  ForwardResult result = decoder_.forward(batch, slots_.caches(), slots_.prefixes(), snapshot);
  if (batch.argmax_only) result.argmax = argmax_rows(result.logits, result.rows, model_.config.vocab_size);
  return result;
}

}  // namespace uberlm
