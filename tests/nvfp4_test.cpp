// NVFP4 core: element and scale codes, packing, the quantiser's rounding and error bounds on random and
// adversarial tensors, input rejection, and the CPU reference GEMM.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/nvfp4.h"
#include "ops/cpu/linear_nvfp4.h"

namespace uberlm {
namespace {

// Distance from q to the nearest E2M1 grid value (of either sign, saturating at +-6).
float distance_to_e2m1_grid(float q) {
  float best = INFINITY;
  for (float v : kE2M1Values) best = std::fmin(best, std::fmin(std::fabs(q - v), std::fabs(q + v)));
  return best;
}

// Checks every element of quantize(values) against ModelOpt's recipe: global = amax / 2688 (1 for an
// all-zero tensor); the block scale is the E4M3 rounding of amax(block) / (6 * global) clamped into
// [2^-9, 448], 1 for a zero block; each element is the grid value nearest to w / (scale * global).
void expect_quantised_per_recipe(const std::vector<float>& values, int64_t rows, int64_t cols) {
  const Nvfp4Tensor q = quantize_nvfp4(values.data(), rows, cols, "test.weight");
  const std::vector<float> restored = dequantize_nvfp4(q.view());
  float amax = 0.0f;
  for (float v : values) amax = std::fmax(amax, std::fabs(v));
  ASSERT_EQ(q.global_scale, amax == 0.0f ? 1.0f : amax / (6.0f * 448.0f));
  for (int64_t block = 0; block < rows * cols / 16; ++block) {
    float block_amax = 0.0f;
    for (int i = 0; i < 16; ++i) block_amax = std::fmax(block_amax, std::fabs(values[block * 16 + i]));
    const float raw_scale = block_amax == 0.0f ? 1.0f : block_amax / (6.0f * q.global_scale);
    const uint8_t expected_code = f32_to_e4m3(std::fmin(std::fmax(raw_scale, 0x1p-9f), 448.0f));
    const float multiplier = e4m3_to_f32(expected_code) * q.global_scale;
    ASSERT_EQ(q.scales[block], expected_code) << "block " << block;
    for (int i = 0; i < 16; ++i) {
      const float w = values[block * 16 + i], back = restored[block * 16 + i];
      const float scaled = w / multiplier;
      // The chosen code is the nearest grid value: its distance to w/multiplier equals the minimum
      // (to within the fp32 rounding of the dequantised product, 2^-22 relative).
      const float chosen = back / multiplier;
      EXPECT_LE(std::fabs(chosen - scaled), distance_to_e2m1_grid(scaled) + 1e-6f * std::fabs(scaled) + 1e-30f)
          << "block " << block << " element " << i << " w=" << w << " back=" << back;
      // Whole-block bound: the E4M3 scale is within 1/16 of amax/6 (normal range), the grid gap at most 2
      // units and saturation costs at most 6/(1-1/16) - 6 < 0.41 units: |error| <= 1 unit <= amax/6 * 17/16.
      if (expected_code >= 0x08) EXPECT_LE(std::fabs(w - back), block_amax / 6.0f * (17.0f / 16.0f));
    }
  }
}

TEST(Nvfp4, EveryE2M1CodeRoundTrips) {
  for (uint8_t code = 0; code < 16; ++code) {
    const float value = e2m1_to_f32(code);
    EXPECT_EQ(std::fabs(value), kE2M1Values[code & 7]);
    EXPECT_EQ(std::signbit(value), (code & 8) != 0);
    EXPECT_EQ(f32_to_e2m1(value), code) << "code " << int(code);
  }
  // Ties round to the even code; beyond 6 saturates.
  EXPECT_EQ(f32_to_e2m1(0.25f), 0);
  EXPECT_EQ(f32_to_e2m1(0.75f), 2);
  EXPECT_EQ(f32_to_e2m1(2.5f), 4);
  EXPECT_EQ(f32_to_e2m1(5.0f), 6);
  EXPECT_EQ(f32_to_e2m1(1000.0f), 7);
  EXPECT_EQ(f32_to_e2m1(-1000.0f), 15);
}

TEST(Nvfp4, EveryE4M3CodeRoundTrips) {
  int checked = 0;
  for (int code = 0; code < 256; ++code) {
    const float value = e4m3_to_f32(static_cast<uint8_t>(code));
    if ((code & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(value));
      continue;
    }
    EXPECT_EQ(f32_to_e4m3(value), code) << "code " << code;
    ++checked;
  }
  EXPECT_EQ(checked, 254);
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
}

TEST(Nvfp4, PackingPutsEvenElementInLowNibble) {
  // One row of 16: elements 0..15 take codes 0..15; byte j = code(2j) | code(2j+1) << 4.
  std::vector<uint8_t> packed(8), scales = {0x38};  // E4M3 0x38 = 1.0
  for (int j = 0; j < 8; ++j) packed[j] = static_cast<uint8_t>((2 * j) | ((2 * j + 1) << 4));
  const Nvfp4Weight weight{1, 16, packed.data(), scales.data(), 0.5f};
  std::vector<float> row(16);
  dequantize_nvfp4_row(weight, 0, row.data());
  for (int k = 0; k < 16; ++k) EXPECT_EQ(row[k], e2m1_to_f32(static_cast<uint8_t>(k)) * 0.5f) << "k " << k;
}

TEST(Nvfp4, QuantiseRandomFollowsRecipe) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const int64_t rows = 37, cols = 272;
  std::vector<float> values(rows * cols);
  for (float& v : values) v = normal(rng);
  expect_quantised_per_recipe(values, rows, cols);

  // Typical relative error of NVFP4 on Gaussian data: well under 15% of the RMS per element.
  const Nvfp4Tensor q = quantize_nvfp4(values.data(), rows, cols, "gauss");
  const std::vector<float> back = dequantize_nvfp4(q.view());
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    err2 += (values[i] - back[i]) * (values[i] - back[i]);
    ref2 += values[i] * values[i];
  }
  EXPECT_LT(std::sqrt(err2 / ref2), 0.15);
}

TEST(Nvfp4, QuantiseAdversarialBlocks) {
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  const int64_t rows = 4, cols = 16 * 24;
  std::vector<float> values(rows * cols);
  for (int64_t block = 0; block < rows * cols / 16; ++block) {
    // Block magnitudes from 2^-40 (its scale clamps to E4M3's 2^-9) up to 2^30 (sets the global scale),
    // with some all-zero blocks and some blocks holding a single spike among zeros.
    const int kind = static_cast<int>(block % 6);
    const float magnitude = std::ldexp(1.0f, static_cast<int>(block % 71) - 40);
    for (int i = 0; i < 16; ++i) {
      float v = 0.0f;
      if (kind == 1) v = (i == 5) ? magnitude : 0.0f;
      else if (kind != 0) v = unit(rng) * magnitude;
      values[block * 16 + i] = v;
    }
  }
  expect_quantised_per_recipe(values, rows, cols);

  const Nvfp4Tensor q = quantize_nvfp4(values.data(), rows, cols, "adversarial");
  const std::vector<float> back = dequantize_nvfp4(q.view());
  for (int64_t block = 0; block < rows * cols / 16; block += 6) {
    EXPECT_EQ(q.scales[block], 0x38) << "zero block " << block;  // ModelOpt gives a zero block scale 1
    for (int i = 0; i < 8; ++i) EXPECT_EQ(q.packed[block * 8 + i], 0) << "zero block " << block;
  }
  for (float v : back) EXPECT_TRUE(std::isfinite(v));
}

TEST(Nvfp4, QuantiseTinyAndHugeTensors) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (float magnitude : {1e-30f, 1e-3f, 1e30f}) {
    std::vector<float> values(3 * 64);
    for (float& v : values) v = unit(rng) * magnitude;
    SCOPED_TRACE(magnitude);
    expect_quantised_per_recipe(values, 3, 64);
  }
}

TEST(Nvfp4, AllZeroTensorQuantisesToZeros) {
  std::vector<float> values(2 * 32, 0.0f);
  const Nvfp4Tensor q = quantize_nvfp4(values.data(), 2, 32, "zeros");
  EXPECT_EQ(q.global_scale, 1.0f);  // loadable: a zero global scale is a checkpoint error
  for (uint8_t b : q.packed) EXPECT_EQ(b, 0);
  for (uint8_t s : q.scales) EXPECT_EQ(s, 0x38);
  for (float v : dequantize_nvfp4(q.view())) EXPECT_EQ(v, 0.0f);
}

TEST(Nvfp4, SignBitFollowsTheScaledValue) {
  // One block of amax 6 (scale 1 after the global): a negative that rounds to zero keeps its sign (code 8),
  // -0.0 does not (code 0), as ModelOpt's `scaled < 0` decides.
  std::vector<float> values(16, 0.0f);
  values[0] = 6.0f * 2688.0f;
  values[1] = -0.1f * 2688.0f;
  values[2] = -0.0f;
  const Nvfp4Tensor q = quantize_nvfp4(values.data(), 1, 16, "signs");
  EXPECT_EQ(q.global_scale, 6.0f);
  EXPECT_EQ(q.scales[0], 0x7e);  // 448
  EXPECT_EQ(q.packed[0], 0x87);  // element 0: +6 (7), element 1: -0 (8)
  EXPECT_EQ(q.packed[1], 0x00);  // element 2: -0.0 stores +0
}

TEST(Nvfp4, DivisorGlobalScaleDequantisesAsCompressedTensors) {
  // compressed-tensors computes e2m1 * (e4m3 / divisor); a divisor of 3 is inexact as a multiplier.
  std::vector<uint8_t> packed(8), scales = {0x3d};  // E4M3 0x3d = 1.625
  for (int j = 0; j < 8; ++j) packed[j] = static_cast<uint8_t>((2 * j) | ((2 * j + 1) << 4));
  Nvfp4Weight weight{1, 16, packed.data(), scales.data(), 1.0f / 3.0f};
  weight.global_divisor = 3.0f;
  std::vector<float> row(16);
  dequantize_nvfp4_row(weight, 0, row.data());
  const float block_multiplier = 1.625f / 3.0f;
  for (int k = 0; k < 16; ++k) EXPECT_EQ(row[k], e2m1_to_f32(static_cast<uint8_t>(k)) * block_multiplier) << k;
}

TEST(Nvfp4, NonFiniteInputIsRejectedWithTensorName) {
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    std::vector<float> values(2 * 32, 0.25f);
    values[37] = bad;
    try {
      quantize_nvfp4(values.data(), 2, 32, "layers.3.mlp.down_proj.weight");
      FAIL() << "accepted " << bad;
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("layers.3.mlp.down_proj.weight"), std::string::npos) << message;
      EXPECT_NE(message.find("row 1"), std::string::npos) << message;
    }
  }
}

TEST(Nvfp4, BadShapesAreRejected) {
  std::vector<float> values(40, 1.0f);
  EXPECT_THROW(quantize_nvfp4(values.data(), 2, 20, "odd"), Error);
  EXPECT_THROW(quantize_nvfp4(values.data(), 0, 16, "empty"), Error);
}

TEST(Nvfp4, CompressedTensorsGlobalScaleIsInverted) {
  EXPECT_EQ(global_scale_from_compressed_tensors(4.0f), 0.25f);
  EXPECT_THROW(global_scale_from_compressed_tensors(0.0f), Error);
  EXPECT_THROW(global_scale_from_compressed_tensors(NAN), Error);
}

TEST(Nvfp4, ReferenceGemmMatchesDequantisedMatmul) {
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 33, 64}, {5, 70, 160}, {17, 9, 512}}) {
    std::vector<float> w(n * k), x(m * k);
    for (float& v : w) v = normal(rng);
    for (float& v : x) v = normal(rng);
    const Nvfp4Tensor q = quantize_nvfp4(w.data(), n, k, "gemm");
    const std::vector<float> deq = dequantize_nvfp4(q.view());
    std::vector<float> y(m * n, NAN);
    cpu::linear_nvfp4(x.data(), m, q.view(), y.data());
    for (int64_t t = 0; t < m; ++t) {
      for (int64_t j = 0; j < n; ++j) {
        double ref = 0, magnitude = 0;
        for (int64_t i = 0; i < k; ++i) {
          ref += double(x[t * k + i]) * deq[j * k + i];
          magnitude += std::fabs(double(x[t * k + i]) * deq[j * k + i]);
        }
        // fp32 accumulation of k terms: error <= k * 2^-24 * sum|terms|.
        EXPECT_NEAR(y[t * n + j], ref, k * 6e-8 * magnitude) << "m=" << m << " t=" << t << " n=" << j;
      }
    }
  }
}

}  // namespace
}  // namespace uberlm
