#pragma once
// A loaded checkpoint: its config, its mapped tensors and the decoder weights viewing them.
#include <filesystem>
#include <memory>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace uberlm {

struct Model {
  std::filesystem::path dir;
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;  // owns the mappings `weights` views
  ModelWeights weights;
  std::vector<int> stop_token_ids;

  // Throws Error naming the file, field or tensor at fault.
  static std::unique_ptr<Model> load(const std::filesystem::path& dir);
};

}  // namespace uberlm
