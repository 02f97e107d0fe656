#pragma once
// Named model shapes for synthetic-weight runs (`uberlm bench --shape`, `uberlm serve --shape`).
#include <string>

#include "model/config.h"

namespace uberlm::cli {

// "qwen3.5-27b", "qwen3.5-9b" (spec/qwen3_5.md), or "default" (the config of the default model).
ModelConfig shape_config(const std::string& shape);

}  // namespace uberlm::cli
