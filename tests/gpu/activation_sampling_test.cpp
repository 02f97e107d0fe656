// SwiGLU, the attention output gate, bias and residual adds, and the device argmax against host math.
#include <gtest/gtest.h>

#include <algorithm>

#include "gpu_test_util.h"
#include "ops/cpu/activation.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/sampling.h"

namespace uberlm {
namespace {
using namespace gpu_test;

constexpr double kBf16OutTolerance = 1.0 / 128;  // one bf16 rounding of the output

TEST(GpuOps, SwigluAndOutputGateMatchCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const int64_t rows = 7, cols = 100, stride = 128;
  const std::vector<float> gate = random_floats(rows * cols, 4.0f), up = random_floats(rows * cols, 2.0f);
  DeviceBuffer d_gate = upload(gate), d_up = upload(up), d_out = poisoned<uint16_t>(rows * stride);
  sync_and_check(cuda::launch_swiglu(d_gate.as<float>(), d_up.as<float>(), rows, cols, d_out.data(), stride, nullptr));
  const std::vector<float> out = from_bf16(d_out.download<uint16_t>());
  std::vector<float> got, ref;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      got.push_back(out[r * stride + i]);
      ref.push_back(cpu::silu(gate[r * cols + i]) * up[r * cols + i]);
    }
  }
  expect_close(got, ref, kBf16OutTolerance, "swiglu");

  // Gated attention output: gate of head h at q_proj row offset h * 2 hd + hd.
  const int64_t tokens = 5;
  const int heads = 3, hd = 24;
  const int64_t q_rows = 2 * heads * hd, width = heads * hd, out_stride = 96;
  const std::vector<float> attended = random_floats(tokens * width), q_proj = random_floats(tokens * q_rows, 3.0f);
  DeviceBuffer d_att = upload(attended), d_q = upload(q_proj), d_gated = poisoned<uint16_t>(tokens * out_stride);
  sync_and_check(cuda::launch_output_gate(d_att.as<float>(), d_q.as<float>() + hd, q_rows, 2 * hd, tokens, heads, hd,
                                          d_gated.data(), out_stride, nullptr));
  const std::vector<float> gated = from_bf16(d_gated.download<uint16_t>());
  got.clear();
  ref.clear();
  for (int64_t t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int d = 0; d < hd; ++d) {
        got.push_back(gated[t * out_stride + h * hd + d]);
        ref.push_back(attended[t * width + h * hd + d] * cpu::sigmoid(q_proj[t * q_rows + h * 2 * hd + hd + d]));
      }
    }
  }
  expect_close(got, ref, kBf16OutTolerance, "output gate");

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
    DeviceBuffer d_logits = upload(logits), d_tokens = poisoned<int32_t>(rows);
    sync_and_check(cuda::launch_argmax(d_logits.as<float>(), rows, vocab, d_tokens.as<int32_t>(), nullptr));
    const std::vector<int32_t> got = d_tokens.download<int32_t>();
    for (int64_t r = 0; r < rows; ++r) {
      const auto row = logits.begin() + r * vocab;
      EXPECT_EQ(got[r], std::max_element(row, row + vocab) - row) << "vocab " << vocab << " row " << r;
    }
  }
}

}  // namespace
}  // namespace uberlm
