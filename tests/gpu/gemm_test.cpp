// The large-M (prefill) linear path against the CPU reference on fresh random inputs: the NVFP4 -> bf16
// dequantisation bit for bit, and cuBLAS linear layers (bf16 and dequantised NVFP4 weights) for M = 65 ..
// 2048 with the output poisoned (NaN bytes) before each call.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/nvfp4.h"
#include "ops/cpu/linear.h"
#include "ops/cpu/linear_nvfp4.h"
#include "ops/cuda/dequantize_nvfp4.h"
#include "ops/cuda/gemm.h"
#include "gpu_test_util.h"

namespace uberlm {
namespace {

using gpu_test::poisoned;
using gpu_test::require_gpu;
using gpu_test::rng;
using gpu_test::DeviceNvfp4;
using gpu_test::upload;
using gpu_test::upload_nvfp4;

// The GEMM multiplies exact products (bf16 activations times bf16 weights, or the dequantised NVFP4
// weights, which are exact in bf16) and accumulates in fp32 in another order than the CPU; the global
// scale is applied once to the sum instead of to each weight. The difference is fp32 rounding of K-term
// sums, about sqrt(K) * 2^-24 relative (4e-6 at K = 5120): 1e-4 of max|ref| leaves a 25x margin.
constexpr double kTolerance = 1e-4;
// Written as bf16 (prompt steps' MLP products): one more rounding, half a bf16 ulp, at most 2^-8 of an
// element's value (measured on the H200: 2.1e-3 to 2.4e-3 of max|ref| over the shapes below).
constexpr double kBf16OutputTolerance = kTolerance + 1.0 / 256;

struct Shape {
  int64_t n, k;
};
// Odd N, K not a multiple of cuBLAS's tiles, and a 27B-like K.
constexpr Shape kShapes[] = {{37, 64}, {300, 160}, {1000, 512}, {264, 5120}};
constexpr int64_t kRowCounts[] = {65, 100, 257, 1000, 2048};

// Random E2M1 codes (every code, both zeros) with E4M3 scales over the whole finite range, both signs.
Nvfp4Tensor random_nvfp4(int64_t n, int64_t k, float global_scale) {
  Nvfp4Tensor t;
  t.rows = n;
  t.cols = k;
  std::uniform_int_distribution<int> byte(0, 255), scale(1, 0x7e);
  t.packed.resize(n * k / 2);
  for (auto& b : t.packed) b = static_cast<uint8_t>(byte(rng()));
  t.scales.resize(n * k / 16);
  for (auto& s : t.scales) s = static_cast<uint8_t>(scale(rng()) | (byte(rng()) & 0x80));
  t.global_scale = global_scale;
  return t;
}

// Gaussian weights quantised as ModelOpt does: realistic scales.
Nvfp4Tensor quantised_gaussian(int64_t n, int64_t k) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> values(n * k);
  for (float& v : values) v = normal(rng());
  return quantize_nvfp4(values.data(), n, k, "gemm_test");
}

// bf16 activations [m, k] (never zero) and their fp32 values.
std::vector<uint16_t> random_activations(int64_t m, int64_t k) { return gpu_test::to_bf16(gpu_test::random_floats(m * k)); }

class GpuGemm : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(require_gpu());
    CUDA_CHECK(cudaStreamCreate(&stream_));
    workspace_ = DeviceBuffer(cuda::kGemmWorkspaceBytes);
    gemm_ = std::make_unique<cuda::Gemm>(stream_, workspace_.data(), cuda::kGemmWorkspaceBytes);
  }
  void TearDown() override {
    gemm_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }
  std::vector<float> run(const std::function<void(float*)>& call, int64_t m, int64_t n) {
    DeviceBuffer y = poisoned<float>(m * n);
    call(y.as<float>());
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    return y.download<float>();
  }
  cudaStream_t stream_ = nullptr;
  DeviceBuffer workspace_;
  std::unique_ptr<cuda::Gemm> gemm_;
};

// Bit for bit: the GPU's bf16 e2m1 * e4m3 against the CPU dequantisation with global scale 1, and each
// bf16 value equal to the CPU's fp32 value (the product is exact in bf16).
TEST_F(GpuGemm, DequantizeNvfp4MatchesCpuBitForBit) {
  for (const Shape& shape : kShapes) {
    for (const bool raw : {true, false}) {
      Nvfp4Tensor host = raw ? random_nvfp4(shape.n, shape.k, 1.0f) : quantised_gaussian(shape.n, shape.k);
      host.global_scale = 1.0f;
      const std::vector<float> cpu = dequantize_nvfp4(host.view());
      const DeviceNvfp4 device = upload_nvfp4(host);
      DeviceBuffer out = poisoned<uint16_t>(shape.n * shape.k);
      gpu_test::sync_and_check(cuda::launch_dequantize_nvfp4_bf16(device.view(), out.data(), stream_));
      const std::vector<float> gpu = gpu_test::from_bf16(out.download<uint16_t>());
      ASSERT_EQ(gpu.size(), cpu.size());
      int64_t differ = 0;
      for (size_t i = 0; i < cpu.size(); ++i) {
        if (std::memcmp(&gpu[i], &cpu[i], sizeof(float)) != 0 && differ++ < 5) {
          ADD_FAILURE() << shape.n << "x" << shape.k << (raw ? " raw" : " quantised") << " element " << i << ": gpu "
                        << gpu[i] << " cpu " << cpu[i];
        }
      }
      EXPECT_EQ(differ, 0) << shape.n << "x" << shape.k << (raw ? " raw codes" : " quantised");
    }
  }
}

TEST_F(GpuGemm, Nvfp4MatchesCpuReference) {
  int64_t checked = 0;
  for (const Shape& shape : kShapes) {
    const Nvfp4Tensor host = shape.k == 5120 ? quantised_gaussian(shape.n, shape.k) : random_nvfp4(shape.n, shape.k, 1.0f / 4096);
    const DeviceNvfp4 device = upload_nvfp4(host);
    DeviceBuffer scratch = poisoned<uint16_t>(shape.n * shape.k + 64);  // larger than needed, as when planned
    for (const int64_t m : kRowCounts) {
      const std::vector<uint16_t> x = random_activations(m, shape.k);
      std::vector<float> ref(m * shape.n);
      cpu::linear_nvfp4(gpu_test::from_bf16(x).data(), m, host.view(), ref.data());
      const DeviceBuffer x_device = upload(x);
      const std::vector<float> got = run(
          [&](float* y) {
            gemm_->nvfp4(device.view(), scratch.data(), shape.n * shape.k + 64, x_device.data(), m, y, DType::F32);
          },
          m, shape.n);
      checked += gpu_test::expect_close(got, ref, kTolerance,
                                        "nvfp4 " + std::to_string(m) + "x" + std::to_string(shape.n) + "x" +
                                            std::to_string(shape.k));
    }
  }
  EXPECT_GT(checked, 0);
}

TEST_F(GpuGemm, Bf16MatchesCpuReference) {
  int64_t checked = 0;
  for (const Shape& shape : kShapes) {
    const std::vector<uint16_t> weight = gpu_test::to_bf16(gpu_test::random_floats(shape.n * shape.k, 0.05f));
    const DeviceBuffer weight_device = upload(weight);
    const TensorView weight_view{DType::BF16, {shape.n, shape.k}, weight.data()};
    for (const int64_t m : kRowCounts) {
      const std::vector<uint16_t> x = random_activations(m, shape.k);
      std::vector<float> ref(m * shape.n);
      cpu::linear(gpu_test::from_bf16(x).data(), m, weight_view, TensorView{}, ref.data());
      const DeviceBuffer x_device = upload(x);
      const std::vector<float> got = run(
          [&](float* y) { gemm_->bf16(weight_device.data(), shape.n, shape.k, x_device.data(), m, y, DType::F32); }, m, shape.n);
      checked += gpu_test::expect_close(got, ref, kTolerance,
                                        "bf16 " + std::to_string(m) + "x" + std::to_string(shape.n) + "x" +
                                            std::to_string(shape.k));
    }
  }
  EXPECT_GT(checked, 0);
}

// The bf16 output: cuBLAS may take another kernel for it, so it is checked against the CPU, not against the fp32
// output rounded.
TEST_F(GpuGemm, Nvfp4WithBf16OutputMatchesCpuReference) {
  int64_t checked = 0;
  for (const Shape& shape : kShapes) {
    const Nvfp4Tensor host = random_nvfp4(shape.n, shape.k, 1.0f / 4096);
    const DeviceNvfp4 device = upload_nvfp4(host);
    DeviceBuffer scratch = poisoned<uint16_t>(shape.n * shape.k);
    const int64_t m = 2048;  // a prompt step
    const std::vector<uint16_t> x = random_activations(m, shape.k);
    std::vector<float> ref(m * shape.n);
    cpu::linear_nvfp4(gpu_test::from_bf16(x).data(), m, host.view(), ref.data());
    const DeviceBuffer x_device = upload(x);
    DeviceBuffer y = poisoned<uint16_t>(m * shape.n);
    gemm_->nvfp4(device.view(), scratch.data(), shape.n * shape.k, x_device.data(), m, y.data(), DType::BF16);
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    checked += gpu_test::expect_close(gpu_test::from_bf16(y.download<uint16_t>()), ref, kBf16OutputTolerance,
                                      "nvfp4 to bf16 " + std::to_string(m) + "x" + std::to_string(shape.n) + "x" +
                                          std::to_string(shape.k));
  }
  EXPECT_GT(checked, 0);
}

TEST_F(GpuGemm, RejectsASmallScratchBuffer) {
  const Nvfp4Tensor host = random_nvfp4(64, 64, 1.0f);
  const DeviceNvfp4 device = upload_nvfp4(host);
  DeviceBuffer scratch(64 * 64 * 2), x(65 * 64 * 2), y(65 * 64 * 4);
  EXPECT_THROW(gemm_->nvfp4(device.view(), scratch.data(), 64 * 64 - 1, x.data(), 65, y.data(), DType::F32), Error);
}

}  // namespace
}  // namespace uberlm
