#pragma once
// Device parts of the RMS norms, callable from fused kernels.
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

// 1 / sqrt(mean(x^2) + eps) of a row of `dim` values from their sum of squares.
__device__ __forceinline__ float inverse_rms(float sum_of_squares, int64_t dim, float eps) {
  return 1.0f / sqrtf(sum_of_squares / static_cast<float>(dim) + eps);
}

// inverse_rms of one row handled by a single warp.
__device__ __forceinline__ float warp_inverse_rms(const float* x, int dim, float eps) {
  float sum = 0.0f;
  for (int i = threadIdx.x % 32; i < dim; i += 32) sum += x[i] * x[i];
  return inverse_rms(warp_sum(sum), dim, eps);
}

}  // namespace uberlm::cuda
