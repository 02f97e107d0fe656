// Embedding gather and RMS norm (plain and 1 + w, with residual add and row gather) against the CPU
// reference (ops/cpu/norm.h) on fresh random inputs with poisoned outputs. The gated norm is part of the
// Gated DeltaNet kernel (gated_delta_net_test.cpp).
#include <gtest/gtest.h>

#include <algorithm>

#include "gpu_test_util.h"
#include "ops/cpu/norm.h"
#include "ops/cuda/embedding.h"
#include "ops/cuda/rms_norm.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// bf16 output: one rounding of 2^-9 relative on top of fp32 sums in another order; 1/128 of max|ref|
// bounds it with margin.
constexpr double kBf16OutTolerance = 1.0 / 128;

TEST(GpuOps, EmbeddingGatherIsExact) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const int64_t vocab = 311, dim = 72, tokens = 37;
  const std::vector<uint16_t> table = to_bf16(random_floats(vocab * dim));
  std::vector<int32_t> ids(tokens);
  for (auto& id : ids) id = std::uniform_int_distribution<int>(0, vocab - 1)(rng());
  DeviceBuffer d_table = upload(table), d_ids = upload(ids), d_x = poisoned<float>(tokens * dim);
  sync_and_check(cuda::launch_embedding(d_table.data(), d_ids.as<int32_t>(), tokens, dim, d_x.as<float>(), nullptr));
  const std::vector<float> got = d_x.download<float>();
  int64_t mismatches = 0;
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t i = 0; i < dim; ++i) mismatches += got[t * dim + i] != bf16_to_f32(table[ids[t] * dim + i]);
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(GpuOps, AddRmsNormMatchesCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  int64_t checked = 0;
  // 54: rows that are no whole number of 16-byte quads (the scalar kernel); the others take the quads kernel.
  for (const int64_t dim : {54, 56, 72, 384, 5120}) {
    for (const NormStyle style : {NormStyle::Weight, NormStyle::OnePlusWeight}) {
      const int64_t rows = 9, out_stride = dim + 40;
      std::vector<float> x = random_floats(rows * dim, 3.0f), delta = random_floats(rows * dim);
      const std::vector<float> weight = random_floats(dim);
      DeviceBuffer d_x = upload(x), d_delta = upload(delta), d_w = upload(weight);
      DeviceBuffer d_out = poisoned<uint16_t>(rows * out_stride);
      const float offset = style == NormStyle::OnePlusWeight ? 1.0f : 0.0f;
      sync_and_check(cuda::launch_add_rms_norm(d_x.as<float>(), d_delta.as<float>(), nullptr, rows, dim,
                                               d_w.as<float>(), offset, 1e-6f, d_out.data(), out_stride, nullptr));
      for (int64_t i = 0; i < rows * dim; ++i) x[i] += delta[i];
      expect_close(d_x.download<float>(), x, 1e-7, "residual add");
      std::vector<float> ref(rows * dim);
      cpu::rms_norm(x.data(), rows, dim, weight.data(), style, 1e-6f, ref.data());
      const std::vector<float> out = from_bf16(d_out.download<uint16_t>());
      std::vector<float> got(rows * dim);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < dim; ++i) got[r * dim + i] = out[r * out_stride + i];
      }
      checked += expect_close(got, ref, kBf16OutTolerance, "rms_norm dim " + std::to_string(dim));

      // A row's output does not depend on how many rows the launch has (issue 18): row 0 alone, same bits.
      DeviceBuffer d_alone = poisoned<uint16_t>(dim);
      sync_and_check(cuda::launch_add_rms_norm(d_x.as<float>(), nullptr, nullptr, 1, dim, d_w.as<float>(), offset,
                                               1e-6f, d_alone.data(), dim, nullptr));
      const std::vector<uint16_t> alone = d_alone.download<uint16_t>(), batched = d_out.download<uint16_t>();
      EXPECT_TRUE(std::equal(alone.begin(), alone.end(), batched.begin())) << "dim " << dim;

      // Row gather (the final norm of the logits rows), no residual.
      const std::vector<int32_t> row_index = {4, 0, 8};
      DeviceBuffer d_rows = upload(row_index), d_gathered = poisoned<uint16_t>(3 * dim);
      sync_and_check(cuda::launch_add_rms_norm(d_x.as<float>(), nullptr, d_rows.as<int32_t>(), 3, dim,
                                               d_w.as<float>(), offset, 1e-6f, d_gathered.data(), dim, nullptr));
      std::vector<float> gathered_ref;
      for (int32_t r : row_index) gathered_ref.insert(gathered_ref.end(), ref.begin() + r * dim, ref.begin() + (r + 1) * dim);
      checked += expect_close(from_bf16(d_gathered.download<uint16_t>()), gathered_ref, kBf16OutTolerance, "gathered");
    }
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace uberlm
