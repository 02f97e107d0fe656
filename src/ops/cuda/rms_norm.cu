#include "ops/cuda/rms_norm.cuh"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

namespace {
// Decode norms one row of ~5k values each: a wide block keeps each thread's share small, since the
// launch is latency-bound (one block per row).
constexpr int kNormThreads = 1024;
constexpr int kNormValuesPerThread = 8;  // rows of up to kRmsNormMaxDim values
static_assert(kNormThreads * kNormValuesPerThread == kRmsNormMaxDim);

// One block per output row. The norm weight is constant, so it is loaded before the wait for the previous
// kernel: after the wait comes one round trip (x and delta, loaded together from clamped indices) instead
// of two. The residual add and the sum of squares share that pass, and the row stays in registers for the
// store. kAddDelta is a template parameter so that no load sits under a branch (it would be waited for there).
template <bool kAddDelta>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(float* x, const float* delta, const int32_t* row_index, int64_t dim, const float* weight,
                        float offset, float eps, __nv_bfloat16* out, int64_t out_stride) {
  const int t = threadIdx.x;
  float scales[kNormValuesPerThread], values[kNormValuesPerThread];
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads;
    scales[j] = offset + weight[i < dim ? i : dim - 1];
  }
  begin_dependent_kernel();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  float* row = x + (row_index ? static_cast<int64_t>(row_index[r]) : r) * dim;
  const float* d = delta + r * dim;
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads, clamped = i < dim ? i : dim - 1;
    float value = row[clamped];
    if constexpr (kAddDelta) value += d[clamped];  // x = x + mixer(x)
    values[j] = i < dim ? value : 0.0f;
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads;
    if (kAddDelta && i < dim) row[i] = values[j];
    sum += values[j] * values[j];
  }
  const float scale = inverse_rms(block_sum(sum, scratch), dim, eps);
  __nv_bfloat16* o = out + r * out_stride;
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads;
    if (i < dim) o[i] = __float2bfloat16(values[j] * scale * scales[j]);
  }
}
}  // namespace

cudaError_t launch_add_rms_norm(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                                const float* weight, float offset, float eps, void* out, int64_t out_stride,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (dim < 1 || dim > kRmsNormMaxDim) return cudaErrorInvalidValue;
  const auto kernel = delta ? add_rms_norm_kernel<true> : add_rms_norm_kernel<false>;
  return launch_dependent(kernel, static_cast<unsigned>(rows), kNormThreads, 0, stream, x, delta, row_index, dim,
                          weight, offset, eps, static_cast<__nv_bfloat16*>(out), out_stride);
}

}  // namespace uberlm::cuda
