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

constexpr int kRowBlock = 4;

// out[r] = dot(x, w[r]) for kRowBlock weight rows, each summed exactly as dot() sums it; x is read
// once for all rows.
void dot_rows(const float* x, const float* const* w, int64_t n, float* out) {
  float partial[kRowBlock][8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int r = 0; r < kRowBlock; ++r) {
      for (int j = 0; j < 8; ++j) partial[r][j] += x[k + j] * w[r][k + j];
    }
  }
  for (; k < n; ++k) {
    for (int r = 0; r < kRowBlock; ++r) partial[r][k & 7] += x[k] * w[r][k];
  }
  for (int r = 0; r < kRowBlock; ++r) {
    const float* p = partial[r];
    out[r] = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
  }
}

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
  auto bias_of = [&](int64_t n) { return bias_f32.empty() ? 0.0f : bias_f32[n]; };
  // Blocks of rows of W are the unit of work: converted to fp32 once, dotted with every token. Which
  // rows share a block depends only on the row count, so a token's result never depends on the batch.
  ThreadPool::global().parallel_for((rows + kRowBlock - 1) / kRowBlock, [&](int64_t begin, int64_t end) {
    std::vector<float> w_rows(kRowBlock * cols);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * kRowBlock;
      if (first + kRowBlock > rows) {
        for (int64_t n = first; n < rows; ++n) {
          row_to_f32(weight, n, cols, w_rows.data());
          for (int64_t t = 0; t < num_tokens; ++t) y[t * rows + n] = dot(x + t * cols, w_rows.data(), cols) + bias_of(n);
        }
        continue;
      }
      const float* w[kRowBlock];
      for (int r = 0; r < kRowBlock; ++r) {
        row_to_f32(weight, first + r, cols, w_rows.data() + r * cols);
        w[r] = w_rows.data() + r * cols;
      }
      float out[kRowBlock];
      for (int64_t t = 0; t < num_tokens; ++t) {
        dot_rows(x + t * cols, w, cols, out);
        for (int r = 0; r < kRowBlock; ++r) y[t * rows + first + r] = out[r] + bias_of(first + r);
      }
    }
  });
}

}  // namespace uberlm::cpu
