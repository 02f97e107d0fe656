#pragma once
// Named shapes of real models, for runs on synthetic weights (`uberlm bench --shape`, `uberlm serve --shape`)
// where the checkpoint is not needed: the configs of spec/qwen3_5.md.
#include <optional>
#include <string>

#include "model/config.h"

namespace uberlm {

// "qwen3.5-27b" or "qwen3.5-9b"; nullopt for any other name.
std::optional<ModelConfig> named_model_shape(const std::string& name);

}  // namespace uberlm
