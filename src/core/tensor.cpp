#include "core/tensor.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace uberlm {

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

void to_f32(const TensorView& tensor, float* out) {
  const int64_t n = tensor.numel();
  switch (tensor.dtype) {
    case DType::F32:
      std::memcpy(out, tensor.data, n * 4);
      return;
    case DType::BF16:
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(tensor.as<uint16_t>()[i]);
      return;
    case DType::F16:
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(tensor.as<uint16_t>()[i]);
      return;
    case DType::F8_E4M3:
      for (int64_t i = 0; i < n; ++i) out[i] = e4m3_to_f32(tensor.as<uint8_t>()[i]);
      return;
    default:
      fail("cannot convert a {} tensor to float", dtype_name(tensor.dtype));
  }
}

std::vector<float> to_f32(const TensorView& tensor) {
  std::vector<float> out(tensor.numel());
  to_f32(tensor, out.data());
  return out;
}

}  // namespace uberlm
