// CUDA GEMV / small-M GEMM (NVFP4 and bf16 weights) against the CPU reference on fresh random inputs,
// with the output poisoned (NaN bytes) before each launch so that any element left unwritten fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/nvfp4.h"
#include "core/thread_pool.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/linear_nvfp4.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/gemm_nvfp4_wgmma.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "../expect_error.h"
#include "fused_kernel_harness.h"

namespace uberlm {
namespace {

struct Shape {
  int64_t n, k;
};
// Odd N (partial row groups), K not a multiple of the 128-wide chunk, and the 27B split shapes scaled down.
constexpr Shape kShapes[] = {{37, 64}, {129, 160}, {1000, 512}, {2048, 5120}, {264, 17408}};
constexpr int64_t kTokenCounts[] = {1, 2, 3, 8, 17, 40, 64};

// The kernels multiply exact products (bf16 activations times dequantised weights, which are exact in
// bf16) and accumulate in fp32 on the tensor cores in another order than the CPU: the difference is
// fp32 rounding of K-term sums, about sqrt(K) * 2^-24 relative, far under 1e-3 even at K = 17408.
constexpr double kF32Tolerance = 1e-3;
// bf16 output adds one rounding of 2^-9 relative to each element.
constexpr double kBf16ElementTolerance = 1.0 / 256;

using gpu_test::check_fused_kernel;
using gpu_test::FusedCase;
using gpu_test::FusedOutput;
using gpu_test::require_gpu;

std::vector<uint16_t> random_bf16(std::mt19937& rng, int64_t count, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<uint16_t> out(count);
  for (auto& v : out) {
    do v = f32_to_bf16(normal(rng));
    while (v == 0 || v == 0x8000);  // never zeros
  }
  return out;
}

std::vector<float> to_float(const std::vector<uint16_t>& bf16) {
  std::vector<float> out(bf16.size());
  for (size_t i = 0; i < bf16.size(); ++i) out[i] = bf16_to_f32(bf16[i]);
  return out;
}

// y[t, row] = sum_k x[t, k] W[row, k] in double, for bf16 x [m, k] and W [n, k].
std::vector<float> bf16_reference(const std::vector<uint16_t>& x, int64_t m, const std::vector<uint16_t>& w, int64_t n,
                                  int64_t k) {
  const std::vector<float> wf = to_float(w), xf = to_float(x);
  std::vector<float> ref(m * n);
  ThreadPool::global().parallel_for(n, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t t = 0; t < m; ++t) {
        double sum = 0;
        for (int64_t i = 0; i < k; ++i) sum += double(xf[t * k + i]) * wf[row * k + i];
        ref[t * n + row] = static_cast<float>(sum);
      }
    }
  });
  return ref;
}

// An fp32 output against its reference: every element written (the buffer was NaN-poisoned) and
// max|got - ref| / max|ref| within kF32Tolerance.
void expect_f32_close(const std::vector<float>& got, const std::vector<float>& ref, const std::string& label) {
  ASSERT_EQ(got.size(), ref.size()) << label;
  double ref_max = 0, err_max = 0;
  int64_t unwritten = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    ref_max = std::fmax(ref_max, std::fabs(ref[i]));
    if (!std::isfinite(got[i])) ++unwritten;
    else err_max = std::fmax(err_max, std::fabs(got[i] - ref[i]));
  }
  EXPECT_GT(ref_max, 0.0) << label;
  EXPECT_EQ(unwritten, 0) << label << ": fp32 elements left unwritten or non-finite";
  EXPECT_LE(err_max / ref_max, kF32Tolerance) << label << ": max|ours-ref|/max|ref| (fp32 out)";
}

// Runs `launch(y, dtype)` once with fp32 and once with bf16 output on a NaN-poisoned buffer, and compares
// with ref[m, n]. Returns the number of output elements checked.
template <class Launch>
int64_t check_against_reference(const std::vector<float>& ref, int64_t m, int64_t n, const std::string& label,
                                 Launch launch) {
  double ref_max = 0;
  for (float v : ref) ref_max = std::fmax(ref_max, std::fabs(v));

  DeviceBuffer y32(m * n * sizeof(float));
  y32.fill_bytes(0xff);  // NaN
  launch(y32.data(), DType::F32);
  CUDA_CHECK(cudaDeviceSynchronize());
  expect_f32_close(y32.download<float>(), ref, label);

  DeviceBuffer y16(m * n * sizeof(uint16_t));
  y16.fill_bytes(0xff);
  launch(y16.data(), DType::BF16);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> got16 = y16.download<uint16_t>();
  int64_t bad = 0;
  for (int64_t i = 0; i < m * n; ++i) {
    const float v = bf16_to_f32(got16[i]);
    if (!std::isfinite(v) ||
        std::fabs(v - ref[i]) > kBf16ElementTolerance * std::fabs(ref[i]) + kF32Tolerance * ref_max) {
      if (bad++ < 5) ADD_FAILURE() << label << ": bf16 out element " << i << " = " << v << ", reference " << ref[i];
    }
  }
  EXPECT_EQ(bad, 0) << label << ": bf16 output elements out of tolerance";
  return m * n;
}

// Weights from quantising Gaussian values (realistic scales, every E2M1 code), or raw random codes and
// scales spanning the whole finite E4M3 range.
Nvfp4Tensor random_nvfp4(std::mt19937& rng, int64_t n, int64_t k, bool raw_codes) {
  if (!raw_codes) {
    std::normal_distribution<float> normal(0.0f, 0.05f);
    std::vector<float> values(n * k);
    for (float& v : values) v = normal(rng);
    return quantize_nvfp4(values.data(), n, k, "gemv_test");
  }
  Nvfp4Tensor t;
  t.rows = n;
  t.cols = k;
  std::uniform_int_distribution<int> byte(0, 255), scale(1, 0x7e);
  t.packed.resize(n * k / 2);
  for (auto& b : t.packed) b = static_cast<uint8_t>(byte(rng));
  t.scales.resize(n * k / 16);
  for (auto& s : t.scales) s = static_cast<uint8_t>(scale(rng) | (byte(rng) & 0x80 ? 0x80 : 0));
  t.global_scale = 1.0f / 4096;
  return t;
}

TEST(GpuGemv, Nvfp4MatchesCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(20261101);
  int64_t checked = 0;
  for (const Shape& shape : kShapes) {
    for (int64_t m : kTokenCounts) {
      for (bool raw_codes : {false, true}) {
        const Nvfp4Tensor w = random_nvfp4(rng, shape.n, shape.k, raw_codes);
        const std::vector<uint16_t> x = random_bf16(rng, m * shape.k, 1.0f);
        std::vector<float> ref(m * shape.n);
        cpu::linear_nvfp4(to_float(x).data(), m, w.view(), ref.data());

        const gpu_test::DeviceNvfp4 w_device = gpu_test::upload_nvfp4(w);
        DeviceBuffer x_dev(x);
        const Nvfp4Weight w_dev = w_device.view();
        const std::string label = "nvfp4 N=" + std::to_string(shape.n) + " K=" + std::to_string(shape.k) +
                                  " M=" + std::to_string(m) + (raw_codes ? " raw codes" : " quantised");
        checked += check_against_reference(ref, m, shape.n, label, [&](void* y, DType dtype) {
          cuda::gemv_nvfp4(w_dev, x_dev.data(), m, y, dtype, nullptr);
        });
      }
    }
  }
  EXPECT_GT(checked, 0) << "no case ran";
}

// The small-M GEMM's tiles as the backend makes them (from the GEMV's order, on the GPU), which must equal the
// host's definition of the order (nvfp4_wgmma_layout.h).
DeviceBuffer wgmma_tiles_of(const Nvfp4Tensor& w) {
  const gpu_test::DeviceNvfp4 w_gemv = gpu_test::upload_nvfp4(w);
  const std::vector<uint8_t> host_tiles = cuda::pack_nvfp4_for_wgmma(w.packed.data(), w.scales.data(), w.rows, w.cols);
  DeviceBuffer tiles(host_tiles.size());
  tiles.fill_bytes(0xa5);
  CUDA_CHECK(cuda::launch_pack_nvfp4_for_wgmma(w_gemv.view(), tiles.as<uint8_t>(), nullptr));
  EXPECT_EQ(tiles.download<uint8_t>(), host_tiles) << "tiles packed on the GPU, N=" << w.rows << " K=" << w.cols;
  return tiles;
}

// A K-split workspace: partial sums poisoned, tile counts zero (each launch must leave them zero).
struct WgmmaWorkspace {
  DeviceBuffer partials, arrivals;
  cuda::GemmWgmmaWorkspace view;
  WgmmaWorkspace(int64_t row_tiles, int64_t m, int splits)
      : partials(cuda::gemm_nvfp4_wgmma_partial_floats(row_tiles, m, splits) * sizeof(float)),
        arrivals(row_tiles * sizeof(int)) {
    partials.fill_bytes(0xff);
    arrivals.fill_bytes(0);
    view = {partials.as<float>(), cuda::gemm_nvfp4_wgmma_partial_floats(row_tiles, m, splits), arrivals.as<int>(),
            row_tiles};
  }
  void expect_counts_zero(const std::string& label) const {
    EXPECT_EQ(arrivals.download<int>(), std::vector<int>(view.tiles, 0)) << label << ": tile counts not left zero";
  }
};

// The Hopper small-M GEMM (gemm_nvfp4_wgmma.h) against the same reference and tolerances: every token bucket (8,
// 16, 32, 64 and counts inside them), rows padded to 64 (48, 200) and row tiles the last block fills half (320),
// the default K split, no split and the most splits.
TEST(GpuGemv, WgmmaSmallMMatchesCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  if (!cuda::gemm_nvfp4_wgmma_device_runs()) GTEST_SKIP() << "needs an sm_90 GPU";
  constexpr Shape kWgmmaShapes[] = {{64, 64}, {48, 256}, {200, 128}, {192, 320}, {2048, 5120}, {320, 17408}};
  constexpr int64_t kWgmmaTokenCounts[] = {1, 3, 8, 9, 16, 17, 40, 64, 65, 101, 128};
  std::mt19937 rng(20261204);
  int64_t checked = 0;
  for (const Shape& shape : kWgmmaShapes) {
    const int64_t row_tiles = cuda::gemm_nvfp4_wgmma_row_tiles(shape.n);
    const int default_splits = cuda::gemm_nvfp4_wgmma_splits(row_tiles, shape.k);
    const int most_splits = static_cast<int>(std::min<int64_t>(cuda::kGemmWgmmaMaxSplits, shape.k / 64));
    for (int64_t m : kWgmmaTokenCounts) {
      for (bool raw_codes : {false, true}) {
        const Nvfp4Tensor w = random_nvfp4(rng, shape.n, shape.k, raw_codes);
        const std::vector<uint16_t> x = random_bf16(rng, m * shape.k, 1.0f);
        std::vector<float> ref(m * shape.n);
        cpu::linear_nvfp4(to_float(x).data(), m, w.view(), ref.data());
        const DeviceBuffer tiles = wgmma_tiles_of(w);
        DeviceBuffer x_dev(x);
        const cuda::Nvfp4WgmmaWeight w_dev{shape.n, shape.k, tiles.as<uint8_t>(), w.global_scale};
        for (int splits : {default_splits, 1, most_splits}) {
          const std::string label = "wgmma N=" + std::to_string(shape.n) + " K=" + std::to_string(shape.k) +
                                    " M=" + std::to_string(m) + (raw_codes ? " raw codes" : " quantised") +
                                    " splits " + std::to_string(splits);
          const WgmmaWorkspace workspace(row_tiles, m, splits);
          checked += check_against_reference(ref, m, shape.n, label, [&](void* y, DType dtype) {
            const cuda::Nvfp4WgmmaTarget target{w_dev, y};
            cuda::gemm_nvfp4_wgmma(&target, 1, x_dev.data(), m, dtype, splits, workspace.view, nullptr);
          });
          workspace.expect_counts_zero(label);
        }
      }
    }
  }
  EXPECT_GT(checked, 0) << "no case ran";
}

// Several weights of one K in one launch (q/k/v; a Gated DeltaNet layer's four inputs, two of 48 rows): each
// target equals its own reference, split or not.
TEST(GpuGemv, WgmmaSmallMMultiTargetLaunchMatchesCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  if (!cuda::gemm_nvfp4_wgmma_device_runs()) GTEST_SKIP() << "needs an sm_90 GPU";
  constexpr int64_t kRows[] = {1024, 640, 48, 48}, kK = 512;
  std::mt19937 rng(20261205);
  std::vector<Nvfp4Tensor> weights;
  std::vector<DeviceBuffer> tiles;
  int64_t row_tiles = 0;
  for (int64_t n : kRows) {
    weights.push_back(random_nvfp4(rng, n, kK, false));
    tiles.push_back(wgmma_tiles_of(weights.back()));
    row_tiles += cuda::gemm_nvfp4_wgmma_row_tiles(n);
  }
  for (int64_t m : {5, 24, 64, 120}) {
    const std::vector<uint16_t> x = random_bf16(rng, m * kK, 1.0f);
    DeviceBuffer x_dev(x);
    for (int splits : {1, cuda::gemm_nvfp4_wgmma_splits(row_tiles, kK)}) {
      const std::string label = "wgmma targets M=" + std::to_string(m) + " splits " + std::to_string(splits);
      std::vector<DeviceBuffer> outputs;
      cuda::Nvfp4WgmmaTarget targets[4];
      for (int t = 0; t < 4; ++t) {
        outputs.emplace_back(m * kRows[t] * sizeof(float));
        outputs.back().fill_bytes(0xff);
        targets[t] = {{kRows[t], kK, tiles[t].as<uint8_t>(), weights[t].global_scale}, outputs.back().data()};
      }
      const WgmmaWorkspace workspace(row_tiles, m, splits);
      cuda::gemm_nvfp4_wgmma(targets, 4, x_dev.data(), m, DType::F32, splits, workspace.view, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      for (int t = 0; t < 4; ++t) {
        std::vector<float> ref(m * kRows[t]);
        cpu::linear_nvfp4(to_float(x).data(), m, weights[t].view(), ref.data());
        expect_f32_close(outputs[t].download<float>(), ref, label + " target " + std::to_string(t));
      }
      workspace.expect_counts_zero(label);
    }
  }
}

// One launch for several weights of one K (q/k/v, gate/up): every target equals its own reference, and
// a target's rows past the others' (odd N per target) are all written.
TEST(GpuGemv, MultiTargetLaunchMatchesCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(20261125);
  const int64_t k = 5120;
  const int64_t rows[] = {1000, 37, 264, 48};
  for (int64_t m : {1, 3, 8, 40}) {
    const std::vector<uint16_t> x = random_bf16(rng, m * k, 1.0f);
    DeviceBuffer x_dev(x);
    std::vector<Nvfp4Tensor> weights;
    std::vector<std::vector<float>> refs;
    std::vector<gpu_test::DeviceNvfp4> nvfp4_weights;
    std::vector<DeviceBuffer> bf16_weights, outputs;
    std::vector<cuda::Nvfp4GemvTarget> nvfp4_targets;
    std::vector<cuda::Bf16GemvTarget> bf16_targets;
    std::vector<std::vector<float>> bf16_refs;
    for (int64_t n : rows) {
      weights.push_back(random_nvfp4(rng, n, k, false));
      refs.emplace_back(m * n);
      cpu::linear_nvfp4(to_float(x).data(), m, weights.back().view(), refs.back().data());
      nvfp4_weights.push_back(gpu_test::upload_nvfp4(weights.back()));
      const std::vector<uint16_t> w16 = random_bf16(rng, n * k, 0.05f);
      bf16_refs.push_back(bf16_reference(x, m, w16, n, k));
      bf16_weights.emplace_back(w16);
    }
    for (size_t i = 0; i < std::size(rows); ++i) {
      nvfp4_targets.push_back({nvfp4_weights[i].view(), nullptr});
      bf16_targets.push_back({bf16_weights[i].data(), rows[i], nullptr});
    }
    for (int count = 1; count <= cuda::kGemvMaxTargets; ++count) {
      for (bool nvfp4 : {true, false}) {
        outputs.clear();
        for (int i = 0; i < count; ++i) {
          outputs.emplace_back(m * rows[i] * sizeof(float));
          outputs.back().fill_bytes(0xff);  // NaN
          nvfp4_targets[i].y = bf16_targets[i].y = outputs.back().data();
        }
        if (nvfp4) cuda::gemv_nvfp4_multi(nvfp4_targets.data(), count, x_dev.data(), m, DType::F32, nullptr);
        else cuda::gemv_bf16_multi(bf16_targets.data(), count, k, x_dev.data(), m, DType::F32, nullptr);
        CUDA_CHECK(cudaDeviceSynchronize());
        for (int i = 0; i < count; ++i) {
          expect_f32_close(outputs[i].download<float>(), nvfp4 ? refs[i] : bf16_refs[i],
                           std::string(nvfp4 ? "nvfp4" : "bf16") + " M=" + std::to_string(m) +
                               " targets=" + std::to_string(count) + " target " + std::to_string(i));
        }
      }
    }
  }
}

TEST(GpuGemv, Bf16MatchesCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(777);
  int64_t checked = 0;
  for (const Shape& shape : kShapes) {
    for (int64_t m : kTokenCounts) {
      const std::vector<uint16_t> w = random_bf16(rng, shape.n * shape.k, 0.05f);
      const std::vector<uint16_t> x = random_bf16(rng, m * shape.k, 1.0f);
      const std::vector<float> ref = bf16_reference(x, m, w, shape.n, shape.k);
      DeviceBuffer w_dev(w), x_dev(x);
      const std::string label =
          "bf16 N=" + std::to_string(shape.n) + " K=" + std::to_string(shape.k) + " M=" + std::to_string(m);
      checked += check_against_reference(ref, m, shape.n, label, [&](void* y, DType dtype) {
        cuda::gemv_bf16(w_dev.data(), shape.n, shape.k, x_dev.data(), m, y, dtype, nullptr);
      });
    }
  }
  EXPECT_GT(checked, 0) << "no case ran";
}

// Every compiled tuning (warps, pipeline depth, row tiles), not only the ones the plain calls pick:
// fewer chunks per warp than the pipeline depth, K not a multiple of the chunk, partial row tiles.
TEST(GpuGemv, EveryTuningMatchesCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(4242);
  constexpr Shape kTuningShapes[] = {{129, 160}, {300, 2080}, {48, 17408}};
  constexpr int64_t kTuningTokenCounts[] = {1, 5, 9, 33, 64};
  int64_t checked = 0;
  for (const Shape& shape : kTuningShapes) {
    for (int64_t m : kTuningTokenCounts) {
      const Nvfp4Tensor w = random_nvfp4(rng, shape.n, shape.k, m % 2 == 0);
      const std::vector<uint16_t> x = random_bf16(rng, m * shape.k, 1.0f);
      std::vector<float> ref(m * shape.n);
      cpu::linear_nvfp4(to_float(x).data(), m, w.view(), ref.data());
      const std::vector<uint16_t> wb = random_bf16(rng, shape.n * shape.k, 0.05f);
      const std::vector<float> wbf = to_float(wb), xf = to_float(x);
      std::vector<float> ref_bf16(m * shape.n);
      for (int64_t t = 0; t < m; ++t) {
        for (int64_t row = 0; row < shape.n; ++row) {
          double sum = 0;  // y[t, row] = sum_k x[t, k] W[row, k]
          for (int64_t k = 0; k < shape.k; ++k) sum += double(xf[t * shape.k + k]) * wbf[row * shape.k + k];
          ref_bf16[t * shape.n + row] = static_cast<float>(sum);
        }
      }

      const gpu_test::DeviceNvfp4 w_device = gpu_test::upload_nvfp4(w);
      DeviceBuffer x_dev(x), wb_dev(wb);
      const Nvfp4Weight w_dev = w_device.view();
      const std::string shape_label =
          " N=" + std::to_string(shape.n) + " K=" + std::to_string(shape.k) + " M=" + std::to_string(m);
      for (const cuda::GemvTuning& tuning : cuda::gemv_nvfp4_tunings()) {
        if (!cuda::gemv_nvfp4_tuning_applies(tuning, m, shape.k)) continue;  // BulkStreamTuningsMatchCpuReference
        const std::string label = "nvfp4" + shape_label + " " + cuda::gemv_tuning_name(tuning);
        checked += check_against_reference(ref, m, shape.n, label, [&](void* y, DType dtype) {
          cuda::gemv_nvfp4_tuned(w_dev, x_dev.data(), m, y, dtype, tuning, nullptr);
        });
      }
      for (const cuda::GemvTuning& tuning : cuda::gemv_bf16_tunings()) {
        const std::string label = "bf16" + shape_label + " warps=" + std::to_string(tuning.warps) +
                                  " depth=" + std::to_string(tuning.depth) +
                                  " row_tiles=" + std::to_string(tuning.row_tiles) +
                                  " k_split=" + std::to_string(tuning.k_split);
        checked += check_against_reference(ref_bf16, m, shape.n, label, [&](void* y, DType dtype) {
          cuda::gemv_bf16_tuned(wb_dev.data(), shape.n, shape.k, x_dev.data(), m, y, dtype, tuning, nullptr);
        });
      }
    }
  }
  EXPECT_GT(checked, 0) << "no case ran";
}

// The same inputs give bit-identical outputs on every launch: the reduction order is fixed.
TEST(GpuGemv, OutputsAreDeterministic) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(99);
  const Nvfp4Tensor w = random_nvfp4(rng, 1000, 5120, false);
  for (int64_t m : {1, 8, 64}) {
    const std::vector<uint16_t> x = random_bf16(rng, m * w.cols, 1.0f);
    const gpu_test::DeviceNvfp4 w_device = gpu_test::upload_nvfp4(w);
    DeviceBuffer x_dev(x), y(m * w.rows * sizeof(float));
    const Nvfp4Weight w_dev = w_device.view();
    cuda::gemv_nvfp4(w_dev, x_dev.data(), m, y.data(), DType::F32, nullptr);
    const std::vector<float> first = y.download<float>();
    for (int repeat = 0; repeat < 5; ++repeat) {
      y.fill_bytes(0xff);
      cuda::gemv_nvfp4(w_dev, x_dev.data(), m, y.data(), DType::F32, nullptr);
      const std::vector<float> again = y.download<float>();
      ASSERT_EQ(std::memcmp(first.data(), again.data(), first.size() * sizeof(float)), 0) << "M=" << m;
    }
  }
}

// The batch-invariant tunings (what --deterministic runs): a token's sums depend on the K split alone. Every
// compiled invariant tuning of one K split gives the first M rows of 64 the bits those rows have in the 64-row
// launch of the group's first tuning, at M = 1, 5, 8, 9, 33 and 64; and the built-in invariant tunings (a
// register pipeline up to 8 tokens, cp.async above) do so at every M from 1 to 64. Both formats, at a K of
// the built-in 4-way split and one of its 8-way split.
TEST(GpuGemv, BatchInvariantTuningsGiveARowTheSameBitsAtEveryM) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(20261204);
  const int64_t full = cuda::kGemvMaxM;
  int64_t compared = 0;
  for (const Shape& shape : {Shape{300, 2080}, Shape{48, 17408}}) {
    const int64_t n = shape.n, k = shape.k;
    const Nvfp4Tensor w = random_nvfp4(rng, n, k, false);
    const gpu_test::DeviceNvfp4 w_device = gpu_test::upload_nvfp4(w);
    const std::vector<uint16_t> wb = random_bf16(rng, n * k, 0.05f), x = random_bf16(rng, full * k, 1.0f);
    DeviceBuffer wb_dev(wb), x_dev(x);
    const auto run = [&](bool nvfp4, int64_t m, const cuda::GemvTuning& tuning) {
      DeviceBuffer y(m * n * sizeof(float));
      y.fill_bytes(0xff);
      if (nvfp4) {
        cuda::gemv_nvfp4_tuned(w_device.view(), x_dev.data(), m, y.data(), DType::F32, tuning, nullptr);
      } else {
        cuda::gemv_bf16_tuned(wb_dev.data(), n, k, x_dev.data(), m, y.data(), DType::F32, tuning, nullptr);
      }
      CUDA_CHECK(cudaDeviceSynchronize());
      return y.download<float>();
    };
    const auto expect_rows = [&](const std::vector<float>& got, const std::vector<float>& all, const std::string& label) {
      ++compared;
      ASSERT_EQ(std::memcmp(got.data(), all.data(), got.size() * sizeof(float)), 0) << label << ": a row's bits differ";
    };
    for (bool nvfp4 : {true, false}) {
      const std::string format = std::string(nvfp4 ? "nvfp4" : "bf16") + " K=" + std::to_string(k);
      const auto built_in = [&](int64_t m) {
        return nvfp4 ? cuda::gemv_nvfp4_batch_invariant_tuning(m, k) : cuda::gemv_bf16_batch_invariant_tuning(m);
      };
      const std::vector<float> all = run(nvfp4, full, built_in(full));
      for (int64_t m = 1; m < full; ++m) {
        expect_rows(run(nvfp4, m, built_in(m)), all, format + " built-in M=" + std::to_string(m));
      }
      std::map<int, std::vector<float>> by_k_split;
      for (const cuda::GemvTuning& t : nvfp4 ? cuda::gemv_nvfp4_tunings() : cuda::gemv_bf16_tunings()) {
        if (!t.batch_invariant) continue;
        const auto [first, fresh] = by_k_split.try_emplace(t.k_split);
        if (fresh) first->second = run(nvfp4, full, t);
        for (int64_t m : {1, 5, 8, 9, 33, 64}) {
          expect_rows(run(nvfp4, m, t), first->second, format + " " + cuda::gemv_tuning_name(t) + " M=" + std::to_string(m));
        }
      }
    }
  }
  EXPECT_GT(compared, 200);
}

// The gate/up pair with SwiGLU in the GEMV epilogue (gemv_*_swiglu) on fresh weights of one format.
struct SwigluCase {
  bool nvfp4;
  int64_t n, k, m, out_stride;
  Nvfp4Tensor gate_q, up_q;                    // nvfp4
  std::vector<uint16_t> gate_b, up_b;          // bf16
  std::vector<uint16_t> x;
  gpu_test::DeviceNvfp4 gate_nvfp4, up_nvfp4;
  DeviceBuffer gate_dev, up_dev, x_dev;

  Nvfp4Weight gate_weight() const { return gate_nvfp4.view(); }
  Nvfp4Weight up_weight() const { return up_nvfp4.view(); }

  // silu(gate) * up in fp32 of the CPU GEMVs (fp32 out of the NVFP4 reference, double sums for bf16), not
  // rounded to bf16: the GPU's one rounding is within half a bf16 ulp of it.
  std::vector<float> reference() const {
    std::vector<float> gate(m * n), up(m * n);
    if (nvfp4) {
      const std::vector<float> xf = to_float(x);
      cpu::linear_nvfp4(xf.data(), m, gate_q.view(), gate.data());
      cpu::linear_nvfp4(xf.data(), m, up_q.view(), up.data());
    } else {
      gate = bf16_reference(x, m, gate_b, n, k);
      up = bf16_reference(x, m, up_b, n, k);
    }
    std::vector<float> out(m * n);
    for (int64_t i = 0; i < m * n; ++i) out[i] = cpu::silu(gate[i]) * up[i];
    return out;
  }

  // The fused launch into a NaN-poisoned [m, out_stride] bf16 buffer; no tuning: the default one.
  std::vector<uint16_t> fused(const std::optional<cuda::GemvTuning>& tuning) const {
    DeviceBuffer out(m * out_stride * sizeof(uint16_t));
    out.fill_bytes(0xff);
    if (nvfp4 && tuning) {
      cuda::gemv_nvfp4_swiglu_tuned(gate_weight(), up_weight(), x_dev.data(), m, out.data(), out_stride, *tuning,
                                    nullptr);
    } else if (nvfp4) {
      cuda::gemv_nvfp4_swiglu(gate_weight(), up_weight(), x_dev.data(), m, out.data(), out_stride, nullptr);
    } else if (tuning) {
      cuda::gemv_bf16_swiglu_tuned(gate_dev.data(), up_dev.data(), n, k, x_dev.data(), m, out.data(), out_stride,
                                   *tuning, nullptr);
    } else {
      cuda::gemv_bf16_swiglu(gate_dev.data(), up_dev.data(), n, k, x_dev.data(), m, out.data(), out_stride, nullptr);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    return out.download<uint16_t>();
  }

  // The unfused path: fp32 gate and up from the plain GEMV (one two-target launch with the default tuning,
  // or one launch per weight with `tuning`), then launch_swiglu, into a poisoned buffer as above.
  std::vector<uint16_t> unfused(const std::optional<cuda::GemvTuning>& tuning) const {
    DeviceBuffer gate(m * n * sizeof(float)), up(m * n * sizeof(float)), out(m * out_stride * sizeof(uint16_t));
    gate.fill_bytes(0xff);
    up.fill_bytes(0xff);
    out.fill_bytes(0xff);
    if (nvfp4 && tuning) {
      cuda::gemv_nvfp4_tuned(gate_weight(), x_dev.data(), m, gate.data(), DType::F32, *tuning, nullptr);
      cuda::gemv_nvfp4_tuned(up_weight(), x_dev.data(), m, up.data(), DType::F32, *tuning, nullptr);
    } else if (nvfp4) {
      const cuda::Nvfp4GemvTarget targets[] = {{gate_weight(), gate.data()}, {up_weight(), up.data()}};
      cuda::gemv_nvfp4_multi(targets, 2, x_dev.data(), m, DType::F32, nullptr);
    } else if (tuning) {
      cuda::gemv_bf16_tuned(gate_dev.data(), n, k, x_dev.data(), m, gate.data(), DType::F32, *tuning, nullptr);
      cuda::gemv_bf16_tuned(up_dev.data(), n, k, x_dev.data(), m, up.data(), DType::F32, *tuning, nullptr);
    } else {
      const cuda::Bf16GemvTarget targets[] = {{gate_dev.data(), n, gate.data()}, {up_dev.data(), n, up.data()}};
      cuda::gemv_bf16_multi(targets, 2, k, x_dev.data(), m, DType::F32, nullptr);
    }
    CUDA_CHECK(cuda::launch_swiglu(gate.data(), up.data(), DType::F32, m, n, out.data(), out_stride, nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    return out.download<uint16_t>();
  }
};

SwigluCase make_swiglu_case(std::mt19937& rng, bool nvfp4, int64_t n, int64_t k, int64_t m) {
  SwigluCase c{nvfp4, n, k, m, (n + 31) / 32 * 32 + 32};  // padded rows, wider than the outputs
  if (nvfp4) {
    c.gate_q = random_nvfp4(rng, n, k, m % 2 == 1);
    c.up_q = random_nvfp4(rng, n, k, false);
    c.up_q.global_scale *= 3.0f;  // the two weights' own global scales must both be applied
    c.gate_nvfp4 = gpu_test::upload_nvfp4(c.gate_q);
    c.up_nvfp4 = gpu_test::upload_nvfp4(c.up_q);
  } else {
    c.gate_b = random_bf16(rng, n * k, 0.05f);
    c.up_b = random_bf16(rng, n * k, 0.05f);
    c.gate_dev = DeviceBuffer(c.gate_b);
    c.up_dev = DeviceBuffer(c.up_b);
  }
  c.x = random_bf16(rng, m * k, 1.0f);
  c.x_dev = DeviceBuffer(c.x);
  return c;
}

// Fused output against the CPU reference: every element of a row's first n written and within one bf16
// rounding of the reference plus the GEMV's fp32 error carried through silu(g) * u (|d/dg silu| < 1.1),
// and the row padding past n left as poisoned. Returns the elements checked.
int64_t expect_swiglu_matches(const SwigluCase& c, const std::vector<uint16_t>& got, const std::vector<float>& ref,
                              const std::string& label) {
  double ref_max = 0;
  for (float v : ref) ref_max = std::fmax(ref_max, std::fabs(v));
  EXPECT_GT(ref_max, 0.0) << label;
  int64_t bad = 0, padding_written = 0;
  for (int64_t t = 0; t < c.m; ++t) {
    for (int64_t j = 0; j < c.out_stride; ++j) {
      const uint16_t bits = got[t * c.out_stride + j];
      if (j >= c.n) {
        padding_written += bits != 0xffff;
        continue;
      }
      const float v = bf16_to_f32(bits), r = ref[t * c.n + j];
      if (!std::isfinite(v) || std::fabs(v - r) > kBf16ElementTolerance * std::fabs(r) + kF32Tolerance * ref_max) {
        if (bad++ < 5) ADD_FAILURE() << label << ": out[" << t << ", " << j << "] = " << v << ", reference " << r;
      }
    }
  }
  EXPECT_EQ(bad, 0) << label << ": elements out of tolerance or unwritten";
  EXPECT_EQ(padding_written, 0) << label << ": row padding past n was written";
  return c.m * c.n;
}

// The fused gate/up + SwiGLU GEMV (ops/cuda/fused/gemv_gate_up_swiglu.cu) through the fused-kernel harness:
// the default path at every M = 1..64 (all token-group counts, partial groups) for odd row counts and K not
// a multiple of the 128-wide chunk, plus the 27B-like K at a few M (the long-K tuning at 17408), bit for bit
// against the unfused GPU path it replaces (two-target GEMV + launch_swiglu), and within tolerance of the
// CPU reference.
TEST(FusedKernels, GateUpSwigluGemvMatchesTheUnfusedOps) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  auto rng = std::make_shared<std::mt19937>(20261126);
  struct Shape {
    int64_t n, k;
    std::vector<int64_t> ms;
  };
  std::vector<int64_t> every_m;
  for (int64_t m = 1; m <= cuda::kGemvMaxM; ++m) every_m.push_back(m);
  const Shape shapes[] = {{37, 160, every_m}, {200, 2080, {1, 2, 7, 8, 9, 16, 17, 31, 33, 64}},
                          {1000, 5120, {1, 8, 13, 64}}, {48, 17408, {1, 5, 64}}};
  std::vector<FusedCase> cases;
  for (const Shape& shape : shapes) {
    for (int64_t m : shape.ms) {
      for (bool nvfp4 : {true, false}) {
        const std::string label = std::string(nvfp4 ? "nvfp4" : "bf16") + " N=" + std::to_string(shape.n) +
                                  " K=" + std::to_string(shape.k) + " M=" + std::to_string(m);
        cases.push_back({label, [rng, nvfp4, shape, m, label]() -> std::vector<FusedOutput> {
                           const SwigluCase c = make_swiglu_case(*rng, nvfp4, shape.n, shape.k, m);
                           const std::vector<uint16_t> fused = c.fused(std::nullopt), unfused = c.unfused(std::nullopt);
                           expect_swiglu_matches(c, fused, c.reference(), label);
                           // Bit patterns as numbers: the rows' poisoned padding (NaN) must match too.
                           return {{"out bits", std::vector<float>(fused.begin(), fused.end()),
                                    std::vector<float>(unfused.begin(), unfused.end()), 0.0}};
                         }});
      }
    }
  }
  check_fused_kernel("gemv_gate_up_swiglu", cases);
}

// Every compiled paired tuning against the CPU reference, and the paired variant of every plain tuning
// (gemv_paired_tuning) bit for bit against that plain tuning + launch_swiglu where their accumulator
// chains agree: plain tunings of two row tiles, or any at one token group (M <= 8).
TEST(GpuGemv, EveryPairedTuningMatchesCpuAndUnfusedPath) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(515);
  constexpr Shape kPairedShapes[] = {{129, 160}, {300, 2080}};
  int64_t checked = 0, compared = 0;
  for (const Shape& shape : kPairedShapes) {
    for (int64_t m : {1, 6, 9, 40, 64}) {
      for (bool nvfp4 : {true, false}) {
        const SwigluCase c = make_swiglu_case(rng, nvfp4, shape.n, shape.k, m);
        const std::vector<float> ref = c.reference();
        const std::string shape_label = std::string(nvfp4 ? "nvfp4" : "bf16") + " N=" + std::to_string(shape.n) +
                                        " K=" + std::to_string(shape.k) + " M=" + std::to_string(m);
        for (const cuda::GemvTuning& t : nvfp4 ? cuda::gemv_nvfp4_paired_tunings() : cuda::gemv_bf16_paired_tunings()) {
          if (!cuda::gemv_nvfp4_tuning_applies(t, m, shape.k)) continue;  // BulkStreamTuningsMatchCpuReference
          checked += expect_swiglu_matches(c, c.fused(t), ref, shape_label + " paired " + cuda::gemv_tuning_name(t));
        }
        for (const cuda::GemvTuning& t : nvfp4 ? cuda::gemv_nvfp4_tunings() : cuda::gemv_bf16_tunings()) {
          if ((t.row_tiles != 2 && m > 8) || !cuda::gemv_nvfp4_tuning_applies(t, m, shape.k)) continue;
          const std::string label = shape_label + " plain " + cuda::gemv_tuning_name(t);
          EXPECT_TRUE(c.fused(cuda::gemv_paired_tuning(t)) == c.unfused(t)) << label << ": fused != unfused";
          ++compared;
        }
      }
    }
  }
  EXPECT_GT(checked, 0) << "no case ran";
  EXPECT_GT(compared, 0) << "no bit comparison ran";
}

std::vector<cuda::GemvTuning> stream_tunings(const std::vector<cuda::GemvTuning>& all) {
  std::vector<cuda::GemvTuning> out;
  for (const cuda::GemvTuning& t : all) {
    if (t.pipeline == cuda::GemvPipeline::BulkStream) out.push_back(t);
  }
  return out;
}

// The bulk-stream kernel (gemv_stream.cuh) at every compiled tuning: partial row tiles, a partial last
// 512-wide stage (K = 2304), stage counts that the cluster ranks split unevenly (K = 2304: 5 stages), more
// tiles than resident clusters (N = 5120) and fewer (N = 37), one and two token groups; plus, per
// tuning: the four-target launch (tiles of one cluster spanning targets), run-to-run bits, a token's
// bits independent of M (batch invariance), and the paired SwiGLU launch against the CPU and, at one
// token group, bit for bit against the plain stream + launch_swiglu.
TEST(GpuGemv, BulkStreamTuningsMatchCpuReference) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  std::mt19937 rng(20261203);
  constexpr Shape kStreamShapes[] = {{37, 512}, {300, 2304}, {5120, 1024}, {264, 17408}};
  constexpr int64_t kStreamTokenCounts[] = {1, 3, 8, 9, 16};
  const std::vector<cuda::GemvTuning> plain = stream_tunings(cuda::gemv_nvfp4_tunings());
  const std::vector<cuda::GemvTuning> paired = stream_tunings(cuda::gemv_nvfp4_paired_tunings());
  ASSERT_FALSE(plain.empty());
  ASSERT_FALSE(paired.empty());
  int64_t checked = 0;
  for (const Shape& shape : kStreamShapes) {
    const Nvfp4Tensor w = random_nvfp4(rng, shape.n, shape.k, shape.n % 2 == 1);
    const gpu_test::DeviceNvfp4 w_device = gpu_test::upload_nvfp4(w);
    const Nvfp4Weight w_dev = w_device.view();
    const std::vector<uint16_t> x_all = random_bf16(rng, 16 * shape.k, 1.0f);
    DeviceBuffer x_dev(x_all);
    for (const cuda::GemvTuning& tuning : plain) {
      const std::string tuning_label = " N=" + std::to_string(shape.n) + " K=" + std::to_string(shape.k) + " " +
                                       cuda::gemv_tuning_name(tuning);
      std::vector<float> first_token_at_m1;
      for (int64_t m : kStreamTokenCounts) {
        const std::vector<uint16_t> x(x_all.begin(), x_all.begin() + m * shape.k);
        std::vector<float> ref(m * shape.n);
        cpu::linear_nvfp4(to_float(x).data(), m, w.view(), ref.data());
        const std::string label = "stream M=" + std::to_string(m) + tuning_label;
        checked += check_against_reference(ref, m, shape.n, label, [&](void* y, DType dtype) {
          cuda::gemv_nvfp4_tuned(w_dev, x_dev.data(), m, y, dtype, tuning, nullptr);
        });
        DeviceBuffer y(m * shape.n * sizeof(float));
        std::vector<float> runs[2];
        for (std::vector<float>& run : runs) {
          y.fill_bytes(0xff);
          cuda::gemv_nvfp4_tuned(w_dev, x_dev.data(), m, y.data(), DType::F32, tuning, nullptr);
          run = y.download<float>();
        }
        EXPECT_EQ(std::memcmp(runs[0].data(), runs[1].data(), runs[0].size() * sizeof(float)), 0)
            << label << ": two runs differ";
        const std::vector<float> first_token(runs[0].begin(), runs[0].begin() + shape.n);
        if (m == 1) first_token_at_m1 = first_token;
        EXPECT_EQ(std::memcmp(first_token.data(), first_token_at_m1.data(), shape.n * sizeof(float)), 0)
            << label << ": token 0 differs from its M = 1 result";
      }
    }
  }
  // Four targets of one K in one launch, odd rows each.
  {
    const int64_t k = 2304, m = 5, rows[] = {37, 1000, 16, 250};
    const std::vector<uint16_t> x = random_bf16(rng, m * k, 1.0f);
    DeviceBuffer x_dev(x);
    std::vector<Nvfp4Tensor> weights;
    std::vector<gpu_test::DeviceNvfp4> device_weights;
    for (int64_t n : rows) {
      weights.push_back(random_nvfp4(rng, n, k, false));
      device_weights.push_back(gpu_test::upload_nvfp4(weights.back()));
    }
    for (const cuda::GemvTuning& tuning : plain) {
      std::vector<DeviceBuffer> outputs;
      std::vector<cuda::Nvfp4GemvTarget> targets;
      for (size_t i = 0; i < std::size(rows); ++i) {
        outputs.emplace_back(m * rows[i] * sizeof(float));
        outputs.back().fill_bytes(0xff);
        targets.push_back({device_weights[i].view(), outputs.back().data()});
      }
      cuda::gemv_nvfp4_multi_tuned(targets.data(), static_cast<int>(targets.size()), x_dev.data(), m, DType::F32,
                                   tuning, nullptr);
      CUDA_CHECK(cudaDeviceSynchronize());
      for (size_t i = 0; i < std::size(rows); ++i) {
        std::vector<float> ref(m * rows[i]);
        cpu::linear_nvfp4(to_float(x).data(), m, weights[i].view(), ref.data());
        expect_f32_close(outputs[i].download<float>(), ref,
                         "stream 4 targets, target " + std::to_string(i) + " " + cuda::gemv_tuning_name(tuning));
        checked += static_cast<int64_t>(ref.size());
      }
    }
  }
  // The paired gate/up launch with SwiGLU.
  for (int64_t m : {1, 8, 13}) {
    const SwigluCase c = make_swiglu_case(rng, true, 300, 2304, m);
    const std::vector<float> ref = c.reference();
    for (const cuda::GemvTuning& tuning : paired) {
      const std::string label = "stream swiglu M=" + std::to_string(m) + " " + cuda::gemv_tuning_name(tuning);
      checked += expect_swiglu_matches(c, c.fused(tuning), ref, label);
    }
    if (m > 8) continue;  // two token groups of two parts run one accumulator chain, the plain kernel two
    for (const cuda::GemvTuning& tuning : plain) {
      EXPECT_TRUE(c.fused(cuda::gemv_paired_tuning(tuning)) == c.unfused(tuning))
          << "stream swiglu M=" << m << " " << cuda::gemv_tuning_name(tuning) << ": fused != unfused";
    }
  }
  EXPECT_GT(checked, 0) << "no case ran";
}

TEST(GpuGemv, BulkStreamRejectsCallsOutsideItsLimits) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const cuda::GemvTuning stream{8, 8, 1, 2, cuda::GemvPipeline::BulkStream};
  DeviceBuffer packed(64 * 512 / 2), scales(64 * 512 / 16), x(17 * 512 * 2), y(17 * 64 * 4);
  const Nvfp4Weight k512{64, 512, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f, 0.0f, Nvfp4CodeOrder::GemvTiled};
  const Nvfp4Weight k160{64, 160, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f, 0.0f, Nvfp4CodeOrder::GemvTiled};
  const Nvfp4Weight unaligned{64, 256, packed.as<uint8_t>(), scales.as<uint8_t>() + 2, 1.0f, 0.0f,
                              Nvfp4CodeOrder::GemvTiled};
  EXPECT_TRUE(cuda::gemv_nvfp4_tuning_applies(stream, 16, 512));
  EXPECT_FALSE(cuda::gemv_nvfp4_tuning_applies(stream, 17, 512));
  EXPECT_FALSE(cuda::gemv_nvfp4_tuning_applies(stream, 1, 160));
  expect_error_containing([&] { cuda::gemv_nvfp4_tuned(k512, x.data(), 17, y.data(), DType::F32, stream, nullptr); },
                          {"M <= 16"});
  expect_error_containing([&] { cuda::gemv_nvfp4_tuned(k160, x.data(), 1, y.data(), DType::F32, stream, nullptr); },
                          {"K a multiple of 256"});
  expect_error_containing([&] { cuda::gemv_nvfp4_tuned(unaligned, x.data(), 1, y.data(), DType::F32, stream, nullptr); },
                          {"16-byte aligned"});
  expect_error_containing([&] { cuda::gemv_nvfp4_tuned(k512, x.data(), 1, y.data(), DType::F32, {8, 8, 1, 3, stream.pipeline},
                                            nullptr); },
                          {"clusters of 1, 2 or 4"});
  expect_error_containing([&] { cuda::gemv_bf16_tuned(x.data(), 8, 512, x.data(), 1, y.data(), DType::F32, stream, nullptr); },
                          {"no kernel compiled"});
  CUDA_CHECK(cudaDeviceSynchronize());
}

TEST(GpuGemv, UnsupportedShapesAreRejected) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  DeviceBuffer packed(64 * 48 / 2), scales(64 * 48 / 16), x(64 * 48 * 2 + 16), y(64 * 64 * 4);
  constexpr Nvfp4CodeOrder kTiled = Nvfp4CodeOrder::GemvTiled;
  const Nvfp4Weight k48{64, 48, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f, 0.0f, kTiled};
  EXPECT_THROW(cuda::gemv_nvfp4(k48, x.data(), 1, y.data(), DType::F32, nullptr), Error);  // K % 32 != 0
  const Nvfp4Weight k32{64, 32, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f, 0.0f, kTiled};
  const Nvfp4Weight checkpoint_order{64, 32, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f};
  EXPECT_THROW(cuda::gemv_nvfp4(checkpoint_order, x.data(), 1, y.data(), DType::F32, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4(k32, x.data(), 0, y.data(), DType::F32, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4(k32, x.data(), 65, y.data(), DType::F32, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4(k32, x.as<uint8_t>() + 2, 1, y.data(), DType::F32, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4(k32, x.data(), 1, y.data(), DType::F16, nullptr), Error);
  EXPECT_THROW(cuda::gemv_bf16(x.data(), 8, 40, x.data(), 1, y.data(), DType::F32, nullptr), Error);
  EXPECT_THROW(cuda::gemv_bf16(x.as<uint8_t>() + 8, 8, 32, x.data(), 1, y.data(), DType::F32, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4_tuned(k32, x.data(), 1, y.data(), DType::F32, {9, 4, 1, 1}, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4_tuned(k32, x.data(), 1, y.data(), DType::F32, {4, 3, 1, 1}, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4_tuned(k32, x.data(), 1, y.data(), DType::F32, {4, 4, 1, 3}, nullptr), Error);
  const Nvfp4Weight rows32{32, 32, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f, 0.0f, kTiled};
  EXPECT_THROW(cuda::gemv_nvfp4_swiglu(k32, rows32, x.data(), 1, y.data(), 64, nullptr), Error);  // unequal shapes
  EXPECT_THROW(cuda::gemv_nvfp4_swiglu(k32, k32, x.data(), 1, y.data(), 63, nullptr), Error);     // stride < N
  EXPECT_THROW(cuda::gemv_nvfp4_swiglu(k32, k32, x.data(), 65, y.data(), 64, nullptr), Error);
  EXPECT_THROW(cuda::gemv_nvfp4_swiglu_tuned(k32, k32, x.data(), 1, y.data(), 64, {4, 4, 1, 4}, nullptr),
               Error);  // paired kernels have two row tiles
  EXPECT_THROW(cuda::gemv_bf16_swiglu(x.data(), x.as<uint8_t>() + 8, 8, 32, x.data(), 1, y.data(), 8, nullptr), Error);
  CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace uberlm
