// Which model a command runs when the options leave it open.
#include <cstdlib>
#include <map>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "model/shapes.h"

namespace uberlm::cli {

std::string default_model_dir() {
  if (const char* env = std::getenv("UBERLM_MODEL")) return env;
  return UBERLM_DEFAULT_MODEL;
}

void add_tuning_options(CLI::App& cmd, std::string& tuning_table, bool& strict) {
  cmd.add_option("--tuning-table", tuning_table,
                 "CUDA: the GEMV winners table of `uberlm tune` (default: this GPU's in the user cache; none: built-in "
                 "tunings)");
  cmd.add_flag("--strict", strict, "Any fallback from the fast path (a GEMV launch the tuning table lacks) is an error");
}

void add_deterministic_option(CLI::App& cmd, bool& deterministic) {
  cmd.add_flag("--deterministic", deterministic,
               "CUDA: a request's output does not depend on what shares its steps (batch-invariant kernels; prompts "
               "prefill at decode-kernel speed). The CPU backend is batch-invariant always");
}

void add_small_m_gemm_option(CLI::App& cmd, bool& small_m_gemm) {
  cmd.add_flag("!--no-small-m-gemm", small_m_gemm,
               "CUDA: NVFP4 products of 17..128 rows on the GEMV (up to 64) or dequantised weights instead of Hopper's wgmma GEMM, which holds a second "
               "copy of those weights in its order");
}

void add_decode_path_option(CLI::App& cmd, DecodePath& decode_path) {
  static const std::map<std::string, DecodePath> paths = {
      {"unfused", DecodePath::Unfused}, {"fused", DecodePath::Fused}, {"auto", DecodePath::Auto}};
  cmd.add_option("--decode-path", decode_path,
                 "CUDA: decode steps of 1..8 sequences run each decoder layer as one fused persistent launch (fused: "
                 "an error where it cannot run; auto: unfused there, logged and counted; default unfused until the "
                 "fused launches are measured)")
      ->transform(CLI::CheckedTransformer(paths, CLI::ignore_case));
}

ModelConfig shape_config(const std::string& name) {
  if (name == "default") return load_model_config(default_model_dir());
  if (std::optional<ModelConfig> shape = named_model_shape(name)) return *shape;
  fail("unknown --shape {} (qwen3.5-27b, qwen3.5-9b or default)", name);
}

}  // namespace uberlm::cli
