#pragma once
// Shared helpers of the whole-backend GPU tests (cuda_backend, cuda_serving, tensor_parallel): where the
// default model is, random prompts, and the small backend shape they run on.
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <vector>

#include "runtime/cuda_backend.h"

namespace uberlm::gpu_test {

// $UBERLM_DEFAULT_MODEL, else models/default relative to the repository root the tests run from.
inline std::filesystem::path default_model() {
  const char* env = std::getenv("UBERLM_DEFAULT_MODEL");
  return env ? env : "models/default";
}

inline std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t count, int vocab) {
  std::vector<int32_t> out(count);
  for (auto& t : out) t = std::uniform_int_distribution<int>(0, vocab - 1)(rng);
  return out;
}

// Plays the scheduler for tests that drive backends directly: each slot's cached length, and a block table
// of the slot's own blocks (slot s owns blocks [s * B, (s + 1) * B), B = max_context / kKvBlockSize
// rounded up: the pool a CudaBackend plans by default). The CPU backend ignores the tables.
class TestSequences {
 public:
  TestSequences(int slots, int64_t max_context)
      : lengths_(slots, 0), blocks_per_slot_((max_context + kKvBlockSize - 1) / kKvBlockSize) {}
  // The next run of `tokens` tokens of `slot`, continuing its sequence (or at 0 after restart()).
  SequenceChunk run(int slot, int64_t tokens, LogitRows logits = LogitRows::Last) {
    SequenceChunk chunk{.slot = slot, .start = lengths_.at(slot), .num_tokens = tokens, .logits = logits, .block_table = {}};
    for (int64_t b = 0; b < blocks_per_slot_; ++b) chunk.block_table.push_back(static_cast<int32_t>(slot * blocks_per_slot_ + b));
    lengths_[slot] += tokens;
    return chunk;
  }
  void restart(int slot) { lengths_.at(slot) = 0; }
  int64_t length(int slot) const { return lengths_.at(slot); }

 private:
  std::vector<int64_t> lengths_;
  int64_t blocks_per_slot_;
};

// Room for a 70-token prefill plus decode rows in one forward, `max_context` tokens per slot.
inline CudaBackendOptions small_backend_options(int slots, int64_t max_context = 512) {
  CudaBackendOptions options;
  options.max_slots = slots;
  options.max_context = max_context;
  options.max_batch_tokens = 160;
  options.max_logit_rows = 64;
  return options;
}

}  // namespace uberlm::gpu_test
