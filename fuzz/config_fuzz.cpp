// Fuzzes parse_model_config on arbitrary config.json text. An uberlm::Error is the expected answer
// to a bad config; any other exception or a sanitizer report is a finding.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  try {
    uberlm::ModelConfig config = uberlm::parse_model_config(text, "fuzz/config.json");
    // An accepted config has one layer kind per layer and a usable rotary dim.
    if (config.layer_kinds.size() != static_cast<size_t>(config.num_layers)) std::abort();
    if (config.rotary_dim <= 0 || config.rotary_dim > config.head_dim) std::abort();
  } catch (const uberlm::Error&) {
  }
  return 0;
}
