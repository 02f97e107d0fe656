#pragma once
// `uberlm bench`: decode and prefill speed of the GPU backend through the Engine (the steps a server runs),
// on a model shape with random weights made on the GPU or on a real checkpoint, against the copy bandwidth
// measured in the same run:
//   decode at each batch: ms per engine step, tokens/s, bytes read per step and per token (all linear
//   weights + each sequence's KV and Gated DeltaNet state), achieved GB/s and its fraction of the copy
//   bandwidth; prefill of each prompt length (time to the first token, in one step or in chunks); a
//   per-op-class microsecond table from a profiling pass; the device memory plan.
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "runtime/cuda_backend.h"

namespace uberlm {

struct SpeedBenchOptions {
  std::string shape_name = "qwen3.5-27b";
  ModelConfig shape;                  // the synthetic model, when no checkpoint is given
  std::string weights = "nvfp4";      // the synthetic linear layers' format
  std::string model;                  // a checkpoint instead of a shape
  std::vector<int> batches = {1, 2, 4, 8, 16, 32, 64};
  std::vector<int> prefill = {512, 2048};
  int prefill_chunk = 0;    // > 0: prompts prefilled in engine steps of at most this many tokens (serve's
                            // --max-num-batched-tokens), timed to the first token; 0: each prompt in one step
  int context = 128;        // tokens in each sequence before the timed decode steps
  int steps = 24;           // timed decode steps per batch
  int tensor_parallel = 1;  // > 1: the model sharded over that many GPUs through NCCL
  std::string tuning_table; // CudaBackendOptions::tuning_table
  bool strict = false;
  bool deterministic = false;  // CudaBackendOptions::deterministic
  bool small_m_gemm = true;    // CudaBackendOptions::small_m_gemm
  DecodePath decode_path = DecodePath::Unfused;  // CudaBackendOptions::decode_path
  std::string command;      // the command line, recorded in the report
};

// Prints the tables as it goes and returns the report (JSON).
nlohmann::json run_speed_bench(const SpeedBenchOptions& options);

}  // namespace uberlm
