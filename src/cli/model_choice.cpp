// Which model a command runs when the options leave it open.
#include <cstdlib>

#include "cli/commands.h"
#include "core/error.h"
#include "model/shapes.h"

namespace uberlm::cli {

std::string default_model_dir() {
  if (const char* env = std::getenv("UBERLM_MODEL")) return env;
  return UBERLM_DEFAULT_MODEL;
}

ModelConfig shape_config(const std::string& name) {
  if (name == "default") return load_model_config(default_model_dir());
  if (std::optional<ModelConfig> shape = named_model_shape(name)) return *shape;
  fail("unknown --shape {} (qwen3.5-27b, qwen3.5-9b or default)", name);
}

}  // namespace uberlm::cli
