#include "ops/cpu/linear.h"

#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"

namespace uberlm::cpu {

float dot(const float* a, const float* b, int64_t n) {
  // Eight independent partial sums: vectorises to one AVX register without -ffast-math.
  float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += a[k + j] * b[k + j];
  }
  for (; k < n; ++k) partial[k & 7] += a[k] * b[k];
  return ((partial[0] + partial[1]) + (partial[2] + partial[3])) + ((partial[4] + partial[5]) + (partial[6] + partial[7]));
}

namespace {
void row_to_f32(const TensorView& weight, int64_t row, int64_t cols, float* out) {
  switch (weight.dtype) {
    case DType::F32: {
      const float* src = weight.as<float>() + row * cols;
      std::copy(src, src + cols, out);
      return;
    }
    case DType::BF16: {
      const uint16_t* src = weight.as<uint16_t>() + row * cols;
      for (int64_t k = 0; k < cols; ++k) out[k] = bf16_to_f32(src[k]);
      return;
    }
    case DType::F16: {
      const uint16_t* src = weight.as<uint16_t>() + row * cols;
      for (int64_t k = 0; k < cols; ++k) out[k] = f16_to_f32(src[k]);
      return;
    }
    default:
      fail("linear: unsupported weight dtype {}", dtype_name(weight.dtype));
  }
}
}  // namespace

void linear(const float* x, int64_t num_tokens, const TensorView& weight, const TensorView& bias, float* y) {
  const int64_t rows = weight.dim(0), cols = weight.dim(1);
  std::vector<float> bias_f32 = bias.data ? to_f32(bias) : std::vector<float>();
  // Rows of W are the unit of work: each is converted to fp32 once and dotted with every token.
  ThreadPool::global().parallel_for(rows, [&](int64_t begin, int64_t end) {
    std::vector<float> w_row(cols);
    for (int64_t n = begin; n < end; ++n) {
      row_to_f32(weight, n, cols, w_row.data());
      const float b = bias_f32.empty() ? 0.0f : bias_f32[n];
      for (int64_t t = 0; t < num_tokens; ++t) y[t * rows + n] = dot(x + t * cols, w_row.data(), cols) + b;
    }
  });
}

}  // namespace uberlm::cpu
