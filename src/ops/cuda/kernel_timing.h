#pragma once
// Timing kernels on the GPU and the inputs they are timed on, shared by `uberlm tune` and tools/kernel_bench:
// CUDA events around each launch (median of many after a warm-up), and deterministic pseudo-random bytes
// fast enough for gigabytes of weights.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/cuda/cuda_check.h"

namespace uberlm::cuda {

inline double median_of(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median milliseconds of `launch(i)` on the default stream over `iters` launches after 10 warm-up ones.
template <class Launch>
double time_median_ms(int iters, Launch launch) {
  for (int i = 0; i < 10; ++i) launch(i);
  std::vector<cudaEvent_t> events(2 * iters);
  for (auto& e : events) CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(events[2 * i], nullptr));
    launch(i);
    CUDA_CHECK(cudaEventRecord(events[2 * i + 1], nullptr));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms(iters);
  for (int i = 0; i < iters; ++i) {
    float elapsed = 0;
    CUDA_CHECK(cudaEventElapsedTime(&elapsed, events[2 * i], events[2 * i + 1]));
    ms[i] = elapsed;
  }
  for (auto& e : events) CUDA_CHECK(cudaEventDestroy(e));
  return median_of(ms);
}

// Median milliseconds per launch of `launch(i)` run `batch` times in a row between two events (so the
// launches follow each other as in a decode step's graph, and dependent launches overlap their
// prologue with the previous launch's tail), over `batches` batches after 10 warm-up launches.
template <class Launch>
double time_back_to_back_ms(int batches, int batch, Launch launch) {
  for (int i = 0; i < 10; ++i) launch(i);
  std::vector<cudaEvent_t> events(batches + 1);
  for (auto& e : events) CUDA_CHECK(cudaEventCreate(&e));
  CUDA_CHECK(cudaEventRecord(events[0], nullptr));
  for (int b = 0; b < batches; ++b) {
    for (int i = 0; i < batch; ++i) launch(b * batch + i);
    CUDA_CHECK(cudaEventRecord(events[b + 1], nullptr));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms(batches);
  for (int b = 0; b < batches; ++b) {
    float elapsed = 0;
    CUDA_CHECK(cudaEventElapsedTime(&elapsed, events[b], events[b + 1]));
    ms[b] = elapsed / batch;
  }
  for (auto& e : events) CUDA_CHECK(cudaEventDestroy(e));
  return median_of(ms);
}

// Deterministic pseudo-random bytes (xorshift64*).
inline void fill_pseudo_random(std::vector<uint8_t>& out, uint64_t seed) {
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < out.size(); i += 8) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    const uint64_t value = state * 0x2545F4914F6CDD1Dull;
    std::memcpy(out.data() + i, &value, std::min<size_t>(8, out.size() - i));
  }
}

// Rewrites random bytes as bf16 values in [-1, 1) (random sign, exponent 0x70..0x7e, random mantissa):
// never zero, never NaN.
inline void make_bf16_values(std::vector<uint8_t>& bytes) {
  for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
    const uint16_t bits = static_cast<uint16_t>(bytes[i] | (bytes[i + 1] << 8));
    const uint16_t exponent = 0x70 + (bits >> 7) % 15;
    const uint16_t value = static_cast<uint16_t>((bits & 0x8000) | (exponent << 7) | (bits & 0x7f));
    bytes[i] = value & 0xff;
    bytes[i + 1] = value >> 8;
  }
}

// E4M3 scales 0.125 .. 14 (finite, never zero) from random bytes.
inline void make_e4m3_scales(std::vector<uint8_t>& bytes) {
  for (auto& s : bytes) s = static_cast<uint8_t>(0x30 + s % 0x18);
}

}  // namespace uberlm::cuda
