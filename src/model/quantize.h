#pragma once
// bf16 -> NVFP4 (W4A16) quantisation of linear layers: as a checkpoint writer (`uberlm quantize`, the
// ModelOpt layout) and in memory at load (`--quantize nvfp4`). Which tensors: every 2-D `*.weight` with a
// column count divisible by 16 that no exclusion regex finds in its name.
#include <filesystem>
#include <string>
#include <vector>

#include "model/model.h"

namespace uberlm {

// lm_head, embed_tokens, conv1d, norms, and the vision tower and MTP head (which our loader skips and other
// engines expect unquantised). 1-D tensors are never quantised.
std::vector<std::string> default_nvfp4_exclusions();

struct QuantizeOptions {
  std::filesystem::path model_dir;  // a bf16 checkpoint directory (single file or shards)
  std::filesystem::path out_dir;
  std::vector<std::string> exclude = default_nvfp4_exclusions();  // ECMAScript regexes, searched in tensor names
  bool force = false;  // replace out_dir when it exists
};

struct QuantizeSummary {
  int quantised_tensors = 0, kept_tensors = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data only
  std::vector<std::string> removed_stale_folders;  // partial folders of earlier runs killed mid-write
};

// Writes the NVFP4 checkpoint (ModelOpt layout: X.weight U8 [N, K/2], X.weight_scale F8_E4M3 [N, K/16],
// X.weight_scale_2 F32 scalar) with the other tensors copied, the shard layout and index kept, the
// non-weight files (tokenizer, generation_config, ...) copied, and config.json's quantization_config plus
// hf_quant_config.json written. Everything goes to a temporary folder beside out_dir, renamed at the end,
// so out_dir never holds half a checkpoint; the folder is removed on failure, and partial folders of
// earlier runs that were killed (`.NAME.partial.PID`, PID no longer running) are removed first. Throws
// Error when out_dir exists (unless force), when a tensor holds NaN or Inf (naming it), or when a regex
// is invalid.
QuantizeSummary quantize_checkpoint(const QuantizeOptions& options);

// `--quantize nvfp4`: replaces every dense linear layer of a loaded model whose canonical weight name
// (e.g. "layers.3.mlp.up_proj.weight", "lm_head.weight") no regex of `exclude` finds by its NVFP4
// quantisation, held in model.owned_nvfp4. Returns the number of layers quantised.
int quantize_model_at_load(Model& model, const std::vector<std::string>& exclude = default_nvfp4_exclusions());

}  // namespace uberlm
