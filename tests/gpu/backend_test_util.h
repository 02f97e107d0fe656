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
