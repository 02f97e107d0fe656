#pragma once
// Shared helpers of the op tests (after llama.cpp's test-backend-ops): fresh random inputs that are never
// zero, device upload/download with every CUDA status checked, NaN-poisoned outputs and a relative-error
// comparison that also counts unwritten (non-finite) elements.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/nvfp4.h"
#include "ops/cuda/nvfp4_gemv_layout.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_buffer.h"

namespace uberlm::gpu_test {

inline void require_gpu() {
  int devices = 0;
  ASSERT_EQ(cudaGetDeviceCount(&devices), cudaSuccess) << "no CUDA device: these tests run on the GPU machine";
  ASSERT_GT(devices, 0);
}

inline std::mt19937& rng() {
  static std::mt19937 generator(std::random_device{}());
  return generator;
}

// Uniform in +-scale, magnitude at least scale / 64.
inline std::vector<float> random_floats(int64_t count, float scale = 1.0f) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> out(count);
  for (float& v : out) {
    do v = uniform(rng());
    while (std::fabs(v) < 1.0f / 64);
    v *= scale;
  }
  return out;
}

inline std::vector<uint16_t> to_bf16(const std::vector<float>& values) {
  std::vector<uint16_t> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = f32_to_bf16(values[i]);
  return out;
}

inline std::vector<float> from_bf16(const std::vector<uint16_t>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i) out[i] = bf16_to_f32(values[i]);
  return out;
}

// Values rounded through bf16 (what a bf16 cache or activation holds).
inline std::vector<float> bf16_rounded(const std::vector<float>& values) { return from_bf16(to_bf16(values)); }

template <typename T>
DeviceBuffer upload(const std::vector<T>& host) {
  return DeviceBuffer(host);
}

// A device buffer of `count` elements of T filled with 0xff bytes (NaN for floats and bf16).
template <typename T>
DeviceBuffer poisoned(int64_t count) {
  DeviceBuffer buffer(count * sizeof(T));
  buffer.fill_bytes(0xff);
  return buffer;
}

inline void sync_and_check(cudaError_t launch_status) {
  CUDA_CHECK(launch_status);
  CUDA_CHECK(cudaDeviceSynchronize());
}

// An NVFP4 weight on the device as the CUDA backend holds it: the codes tiled for the GEMV.
struct DeviceNvfp4 {
  DeviceBuffer packed, scales;
  int64_t rows = 0, cols = 0;
  float global_scale = 0;
  Nvfp4Weight view() const {
    return {rows, cols, packed.as<uint8_t>(), scales.as<uint8_t>(), global_scale, 0.0f, Nvfp4CodeOrder::GemvTiled};
  }
};
inline DeviceNvfp4 upload_nvfp4(const Nvfp4Tensor& t) {
  return {DeviceBuffer(cuda::tile_nvfp4_codes_for_gemv(t.packed.data(), t.rows, t.cols)), DeviceBuffer(t.scales),
          t.rows, t.cols, t.global_scale};
}

// max |got - ref| / max |ref| must be <= tolerance; every element finite. Returns the elements checked.
// max|got - ref| / max|ref| over the finite elements of got (0 when ref is all zeros).
inline double max_relative_error(const std::vector<float>& got, const std::vector<float>& ref) {
  double ref_max = 0, err_max = 0;
  for (size_t i = 0; i < std::min(got.size(), ref.size()); ++i) {
    ref_max = std::fmax(ref_max, std::fabs(ref[i]));
    if (std::isfinite(got[i])) err_max = std::fmax(err_max, std::fabs(static_cast<double>(got[i]) - ref[i]));
  }
  return ref_max > 0 ? err_max / ref_max : 0.0;
}

inline int64_t expect_close(const std::vector<float>& got, const std::vector<float>& ref, double tolerance,
                            const std::string& label) {
  EXPECT_EQ(got.size(), ref.size()) << label;
  const size_t n = std::min(got.size(), ref.size());
  const int64_t bad = std::count_if(got.begin(), got.begin() + n, [](float v) { return !std::isfinite(v); });
  EXPECT_TRUE(std::any_of(ref.begin(), ref.begin() + n, [](float v) { return v != 0.0f; }))
      << label << ": reference is all zeros";
  EXPECT_EQ(bad, 0) << label << ": elements unwritten or non-finite";
  EXPECT_LE(max_relative_error(got, ref), tolerance) << label << ": max|got-ref|/max|ref|";
  return static_cast<int64_t>(ref.size());
}

}  // namespace uberlm::gpu_test
