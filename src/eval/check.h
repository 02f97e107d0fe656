#pragma once
// `uberlm check`: a candidate backend (the production GPU path) against a reference (the CPU decoder, or the
// GPU's eager path) on the same tokens, step by step (one prefill, then greedy decode steps with the
// reference's tokens), layer by layer: the residual stream after the mixer, the caches the step wrote (KV
// entries; Gated DeltaNet conv and recurrent states), the residual stream after the MLP. It stops at the
// first tensor whose max|candidate - reference| / max|reference| exceeds the tolerance, names the step,
// layer, tensor, element and error, and writes both sides' tensors of that layer to a safetensors file.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"

namespace uberlm {

struct CheckOptions {
  std::vector<int32_t> prompt;
  int decode_steps = 8;
  double tolerance = 3e-2;
  std::filesystem::path divergence_file;  // where the diverging layer's tensors go
};

struct Divergence {
  int step = 0;          // 0: the prefill
  int layer = 0;
  std::string tensor;    // after_mixer, keys, values, conv_state, recurrent_state, after_mlp
  int64_t index = 0;     // the element with the largest difference
  double error = 0;      // max|candidate - reference| / max|reference|
  float candidate = 0, reference = 0;
};

struct CheckReport {
  int steps_checked = 0;
  int64_t tensors_compared = 0;
  double worst_error = 0;   // over every tensor compared
  std::optional<Divergence> divergence;
  nlohmann::json to_json() const;
};

// Both backends hold one empty slot 0; the candidate's paged KV (if any) gets blocks 0, 1, ... of its pool.
CheckReport run_check(Backend& candidate, Backend& reference, const CheckOptions& options);

// The command: the CUDA backend as it runs in production (decode steps through their graphs) as the
// candidate, against the CPU decoder ("cpu", for checkpoints) or the CUDA backend run eagerly ("cuda-eager",
// also for synthetic shapes, whose seeded random weights both sides make alike).
struct CheckCommand {
  std::string model;       // a checkpoint, or
  std::string shape_name;  // a named shape with random weights
  ModelConfig shape;
  std::string weights = "nvfp4";
  std::string reference = "cpu";
  std::string prompt = "Natalia sold clips to 48 of her friends in April";
  int steps = 8;
  double tolerance = -1;   // < 0: the default: 3e-2 (the bf16 GPU path's bound) against the CPU or for a fused
                           // candidate against cuda-eager (other tunings); 0 for the unfused path against cuda-eager
  DecodePath decode_path = DecodePath::Unfused;  // the candidate's; the cuda-eager reference runs unfused
  std::string divergence_file = "check-divergence.safetensors";
  std::string tuning_table;
};
nlohmann::json run_check_command(const CheckCommand& command);

}  // namespace uberlm
