#pragma once
// Device parts of the RMS norms, callable from fused kernels.
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

// 1 / sqrt(mean(x^2) + eps) of a row of `dim` values from their sum of squares.
__device__ __forceinline__ float inverse_rms(float sum_of_squares, int64_t dim, float eps) {
  return 1.0f / sqrtf(sum_of_squares / static_cast<float>(dim) + eps);
}

// A thread's loads of one row: kWidth consecutive values each, 16-byte quads (kWidth 4) where the row's length
// and pointers allow it (every model's hidden size), single values (kWidth 1) otherwise. Either way a thread
// makes kNormLoadsPerThread loads, so a block has 1024 threads for single values (a decode step's one row is
// latency-bound: a wide block keeps each thread's share small) and 256 for quads (8 rows share an SM; with
// 1024-thread blocks a prompt's thousands of rows ran ~8 waves of load latency and block barriers, 2.3 TB/s).
// The width depends on the shapes and pointers only, never on the row count, and the sums run in the same
// order at both widths: a row's values are the same bits in a batch of any size.
constexpr int kNormLoadsPerThread = 8;
template <int kWidth>
inline constexpr int kNormThreads = kRmsNormMaxDim / kWidth / kNormLoadsPerThread;

template <int kWidth>
struct alignas(4 * kWidth) FloatLanes {
  float v[kWidth];
};
template <int kWidth>
struct alignas(2 * kWidth) Bf16Lanes {
  __nv_bfloat16 v[kWidth];
};

// Row r of launch_add_rms_norm by a block of kNormThreads<kWidth> threads. The norm weight is constant, so it is
// loaded before wait_for_inputs() (which waits for whatever writes x and delta: the previous kernel, or in a
// persistent kernel the tasks before): after it comes one round trip (x and delta, loaded together from clamped
// indices) instead of two. The residual add and the sum of squares share that pass, and the row stays in
// registers for the store. kAddDelta is a template parameter so that no load sits under a branch (it would be
// waited for there).
template <bool kAddDelta, int kWidth, class WaitForInputs>
__device__ __forceinline__ void add_rms_norm_row(float* x, const float* delta, const int32_t* row_index, int64_t r,
                                                 int64_t dim, const float* weight, float offset, float eps,
                                                 __nv_bfloat16* out, int64_t out_stride,
                                                 const WaitForInputs& wait_for_inputs) {
  using Lanes = FloatLanes<kWidth>;
  constexpr int kThreads = kNormThreads<kWidth>;
  const int t = threadIdx.x, loads = static_cast<int>(dim / kWidth);
  Lanes scales[kNormLoadsPerThread], values[kNormLoadsPerThread];
  const Lanes* w = reinterpret_cast<const Lanes*>(weight);
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads;
    const Lanes weights = w[q < loads ? q : loads - 1];
#pragma unroll
    for (int c = 0; c < kWidth; ++c) scales[j].v[c] = offset + weights.v[c];
  }
  wait_for_inputs();
  __shared__ float scratch[32];
  Lanes* row = reinterpret_cast<Lanes*>(x + (row_index ? static_cast<int64_t>(row_index[r]) : r) * dim);
  const Lanes* d = reinterpret_cast<const Lanes*>(delta + r * dim);
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads, clamped = q < loads ? q : loads - 1;
    Lanes value = row[clamped];
    if constexpr (kAddDelta) {  // x = x + mixer(x)
      const Lanes added = d[clamped];
#pragma unroll
      for (int c = 0; c < kWidth; ++c) value.v[c] += added.v[c];
    }
    values[j] = q < loads ? value : Lanes{};
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads;
    if (kAddDelta && q < loads) row[q] = values[j];
#pragma unroll
    for (int c = 0; c < kWidth; ++c) sum += values[j].v[c] * values[j].v[c];
  }
  const float scale = inverse_rms(block_sum(sum, scratch), dim, eps);
  Bf16Lanes<kWidth>* o = reinterpret_cast<Bf16Lanes<kWidth>*>(out + r * out_stride);
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads;
    if (q >= loads) continue;
    Bf16Lanes<kWidth> normed;
#pragma unroll
    for (int c = 0; c < kWidth; ++c) normed.v[c] = __float2bfloat16(values[j].v[c] * scale * scales[j].v[c]);
    o[q] = normed;
  }
}

}  // namespace uberlm::cuda
