#include "core/nvfp4.h"

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"

namespace uberlm {

namespace {
constexpr float kE2M1Max = 6.0f;
constexpr float kE4M3Max = 448.0f;
constexpr float kE4M3MinSubnormal = 0x1p-9f;

// ModelOpt takes the sign from `scaled < 0`, so -0.0 (a -0 weight) stores code 0, not 8; NaN (0 / 0,
// only when the block multiplier underflows fp32) sorts past every bound of its grid search: code 7.
uint8_t e2m1_code_of_scaled(float scaled) {
  if (std::isnan(scaled)) return 7;
  return scaled == 0.0f ? 0 : f32_to_e2m1(scaled);
}
}  // namespace

float global_scale_from_compressed_tensors(float weight_global_scale) {
  if (!std::isfinite(weight_global_scale) || weight_global_scale <= 0.0f) {
    fail("NVFP4 weight_global_scale must be a positive finite number, got {}", weight_global_scale);
  }
  return 1.0f / weight_global_scale;
}

void check_nvfp4_shape(int64_t rows, int64_t cols, std::string_view name) {
  if (rows <= 0 || cols <= 0 || cols % kNvfp4BlockSize != 0) {
    fail("NVFP4 tensor {}: shape [{}, {}] needs positive sizes and a column count that is a multiple of {}",
         name, rows, cols, kNvfp4BlockSize);
  }
}

void dequantize_nvfp4_row(const Nvfp4Weight& weight, int64_t row, float* out) {
  const uint8_t* packed = weight.packed + row * (weight.cols / 2);
  const uint8_t* scales = weight.scales + row * (weight.cols / kNvfp4BlockSize);
  for (int64_t k = 0; k < weight.cols; k += 2) {
    const float scale = e4m3_to_f32(scales[k / kNvfp4BlockSize]);
    // The block multiplier in fp32 first, then the element: the order both packages dequantise in.
    const float multiplier = weight.global_divisor != 0.0f ? scale / weight.global_divisor : scale * weight.global_scale;
    const uint8_t byte = packed[k / 2];
    out[k] = e2m1_to_f32(byte & 0xf) * multiplier;
    out[k + 1] = e2m1_to_f32(byte >> 4) * multiplier;
  }
}

std::vector<float> dequantize_nvfp4(const Nvfp4Weight& weight) {
  std::vector<float> out(static_cast<size_t>(weight.rows * weight.cols));
  for (int64_t row = 0; row < weight.rows; ++row) dequantize_nvfp4_row(weight, row, out.data() + row * weight.cols);
  return out;
}

Nvfp4Tensor quantize_nvfp4(const float* values, int64_t rows, int64_t cols, std::string_view name) {
  check_nvfp4_shape(rows, cols, name);
  const int64_t count = rows * cols;
  float amax = 0.0f;
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) {
      fail("cannot quantise tensor {} to NVFP4: element {} (row {}, column {}) is {}", name, i, i / cols, i % cols,
           values[i]);
    }
    amax = std::fmax(amax, std::fabs(values[i]));
  }

  Nvfp4Tensor out;
  out.rows = rows;
  out.cols = cols;
  out.packed.assign(static_cast<size_t>(count / 2), 0);
  out.scales.assign(static_cast<size_t>(count / kNvfp4BlockSize), 0);
  out.global_scale = amax / (kE2M1Max * kE4M3Max);
  // ModelOpt would divide by zero here (NaN scales); 1 is compressed-tensors' fallback and keeps the
  // checkpoint loadable: every block is then below the smallest scale and stores zeros.
  if (out.global_scale == 0.0f) out.global_scale = 1.0f;

  for (int64_t block = 0; block < count / kNvfp4BlockSize; ++block) {
    const float* block_values = values + block * kNvfp4BlockSize;
    float block_amax = 0.0f;
    for (int64_t i = 0; i < kNvfp4BlockSize; ++i) block_amax = std::fmax(block_amax, std::fabs(block_values[i]));
    // ModelOpt's order of operations: amax / (6 * global); a zero block takes scale 1; clamp into
    // [2^-9, 448] (the E4M3 range without zero) and round to E4M3.
    float scale = block_amax / (kE2M1Max * out.global_scale);
    if (scale == 0.0f) scale = 1.0f;
    const uint8_t scale_code = f32_to_e4m3(std::fmin(std::fmax(scale, kE4M3MinSubnormal), kE4M3Max));
    out.scales[block] = scale_code;
    const float block_multiplier = e4m3_to_f32(scale_code) * out.global_scale;
    uint8_t* packed = out.packed.data() + block * kNvfp4BlockSize / 2;
    for (int64_t i = 0; i < kNvfp4BlockSize; i += 2) {
      const uint8_t even = e2m1_code_of_scaled(block_values[i] / block_multiplier);
      const uint8_t odd = e2m1_code_of_scaled(block_values[i + 1] / block_multiplier);
      packed[i / 2] = static_cast<uint8_t>(even | (odd << 4));
    }
  }
  return out;
}

}  // namespace uberlm
