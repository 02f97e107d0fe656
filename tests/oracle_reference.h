#pragma once
// The transformers reference that tests/oracle fixtures write as reference.safetensors, and the error
// measure every logits test states its tolerance in.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "io/safetensors.h"

namespace uberlm {

struct OracleReference {
  std::vector<int32_t> prompt, decode_ids;
  std::vector<float> prefill_logits, decode_logits;  // [P, V], [S, V]
};

inline std::vector<int32_t> read_int32_tensor(const SafetensorsFile& file, const char* name) {
  const TensorView view = file.view(name);
  return std::vector<int32_t>(view.as<int32_t>(), view.as<int32_t>() + view.numel());
}

inline OracleReference load_oracle_reference(const std::filesystem::path& dir) {
  auto file = SafetensorsFile::open(dir / "reference.safetensors");
  return {read_int32_tensor(*file, "prompt_ids"), read_int32_tensor(*file, "decode_ids"),
          to_f32(file->view("prefill_logits")), to_f32(file->view("decode_logits"))};
}

// max|ours - ref| / max|ref| over n values; infinite when ours has a NaN or Inf.
inline double max_relative_error(const float* ours, const float* ref, int n) {
  double max_diff = 0.0, max_ref = 0.0;
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(ours[i])) return INFINITY;
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(ours[i]) - ref[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  return max_diff / max_ref;
}

}  // namespace uberlm
