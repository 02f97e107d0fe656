#pragma once
// Device parts of the RMS norms, callable from fused kernels.
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

// 1 / sqrt(mean(x^2) + eps) of one row of `dim`, the block cooperating; every thread gets it.
__device__ __forceinline__ float block_inverse_rms(const float* x, int64_t dim, float eps, float* scratch) {
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += x[i] * x[i];
  sum = block_sum(sum, scratch);
  return 1.0f / sqrtf(sum / static_cast<float>(dim) + eps);
}

// The same for one row handled by a single warp.
__device__ __forceinline__ float warp_inverse_rms(const float* x, int dim, float eps) {
  float sum = 0.0f;
  for (int i = threadIdx.x % 32; i < dim; i += 32) sum += x[i] * x[i];
  sum = warp_sum(sum);
  return 1.0f / sqrtf(sum / static_cast<float>(dim) + eps);
}

}  // namespace uberlm::cuda
