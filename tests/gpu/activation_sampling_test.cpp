// SwiGLU, bias and residual adds, and the device argmax against host math.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "gpu_test_util.h"
#include "ops/cpu/activation.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/sampling.h"

namespace uberlm {
namespace {
using namespace gpu_test;

constexpr double kBf16OutTolerance = 1.0 / 128;  // one bf16 rounding of the output

TEST(GpuOps, SwigluAndResidualAddsMatchCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const int64_t rows = 7, cols = 104, stride = 128;
  // Rows of whole 16-byte vectors (the vectorised kernel: 4 fp32 or 8 bf16 inputs a thread), then rows of 99 (an
  // element per thread); fp32 inputs, and bf16 ones as prompt steps' products write them (the reference then
  // takes the same bf16 values).
  for (const DType in_dtype : {DType::F32, DType::BF16}) {
    for (const auto [swiglu_cols, swiglu_stride] : {std::pair<int64_t, int64_t>{cols, stride}, {99, 101}}) {
      std::vector<float> gate = random_floats(rows * swiglu_cols, 4.0f), up = random_floats(rows * swiglu_cols, 2.0f);
      DeviceBuffer d_gate, d_up;
      if (in_dtype == DType::BF16) {
        gate = bf16_rounded(gate);
        up = bf16_rounded(up);
        d_gate = upload(to_bf16(gate));
        d_up = upload(to_bf16(up));
      } else {
        d_gate = upload(gate);
        d_up = upload(up);
      }
      DeviceBuffer d_out = poisoned<uint16_t>(rows * swiglu_stride);
      sync_and_check(cuda::launch_swiglu(d_gate.data(), d_up.data(), in_dtype, rows, swiglu_cols, d_out.data(),
                                         swiglu_stride, nullptr));
      const std::vector<float> out = from_bf16(d_out.download<uint16_t>());
      std::vector<float> got, ref;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < swiglu_cols; ++i) {
          got.push_back(out[r * swiglu_stride + i]);
          ref.push_back(cpu::silu(gate[r * swiglu_cols + i]) * up[r * swiglu_cols + i]);
        }
      }
      expect_close(got, ref, kBf16OutTolerance,
                   std::string("swiglu, ") + std::string(dtype_name(in_dtype)) + ", " + std::to_string(swiglu_cols) +
                       " columns");
    }
  }

  std::vector<float> y = random_floats(rows * cols);
  const std::vector<float> bias = random_floats(cols), delta = random_floats(rows * cols);
  DeviceBuffer d_y = upload(y), d_bias = upload(bias), d_delta = upload(delta);
  sync_and_check(cuda::launch_add_bias(d_y.as<float>(), d_bias.as<float>(), rows, cols, nullptr));
  sync_and_check(cuda::launch_add_inplace(d_y.as<float>(), d_delta.as<float>(), rows * cols, nullptr));
  for (int64_t i = 0; i < rows * cols; ++i) y[i] = (y[i] + bias[i % cols]) + delta[i];
  expect_close(d_y.download<float>(), y, 0.0, "bias and residual add");
}

TEST(GpuOps, ArgmaxMatchesMaxElement) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  for (const int64_t vocab : {397, 4096, 248320}) {
    const int64_t rows = 9;
    std::vector<float> logits = random_floats(rows * vocab, 10.0f);
    // Row 1: a tie between two maxima (the smaller index wins); row 2: the maximum is the last element.
    logits[vocab + 5] = logits[vocab + 77] = 100.0f;
    logits[3 * vocab - 1] = 100.0f;
    // Row 3: NaNs (never chosen), one of them where the maximum would otherwise be.
    logits[3 * vocab] = logits[3 * vocab + vocab / 2] = std::nanf("");
    std::vector<float> expected_logits = logits;
    expected_logits[3 * vocab] = expected_logits[3 * vocab + vocab / 2] = -INFINITY;
    DeviceBuffer d_logits = upload(logits), d_scratch = upload(std::vector<uint8_t>(rows * sizeof(cuda::ArgmaxScratch)));
    // Twice on one scratch: each launch must leave it zeroed for the next.
    for (int launch = 0; launch < 2; ++launch) {
      DeviceBuffer d_tokens = poisoned<int32_t>(rows);
      sync_and_check(cuda::launch_argmax(d_logits.as<float>(), rows, vocab, d_scratch.as<cuda::ArgmaxScratch>(),
                                         d_tokens.as<int32_t>(), nullptr));
      const std::vector<int32_t> got = d_tokens.download<int32_t>();
      for (int64_t r = 0; r < rows; ++r) {
        const auto row = expected_logits.begin() + r * vocab;
        EXPECT_EQ(got[r], std::max_element(row, row + vocab) - row) << "vocab " << vocab << " row " << r;
      }
    }
  }
}

}  // namespace
}  // namespace uberlm
