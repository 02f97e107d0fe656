#pragma once
// A loaded model: its config, the storage of its tensors and the decoder weights viewing them. A
// checkpoint directory's tensors stay in the mapped safetensors files; a .gguf file's are dequantised
// into buffers the Model owns.
#include <filesystem>
#include <memory>
#include <vector>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/weights.h"

namespace uberlm {

struct Model {
  std::filesystem::path dir;  // the checkpoint directory, or the .gguf file
  ModelConfig config;
  std::unique_ptr<Checkpoint> checkpoint;         // owns the mappings `weights` views (directories)
  std::vector<std::vector<float>> owned_tensors;  // fp32 tensors `weights` views (GGUF)
  std::vector<Nvfp4Tensor> owned_nvfp4;           // NVFP4 weights quantised at load (--quantize nvfp4)
  ModelWeights weights;
  std::vector<int> stop_token_ids;

  // `path` is a checkpoint directory or a .gguf file. Throws Error naming the file, field or tensor at fault.
  static std::unique_ptr<Model> load(const std::filesystem::path& path);
};

}  // namespace uberlm
