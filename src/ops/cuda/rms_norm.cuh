#pragma once
// Device parts of the RMS norms, callable from fused kernels.
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

// 1 / sqrt(mean(x^2) + eps) of a row of `dim` values from their sum of squares.
__device__ __forceinline__ float inverse_rms(float sum_of_squares, int64_t dim, float eps) {
  return 1.0f / sqrtf(sum_of_squares / static_cast<float>(dim) + eps);
}

}  // namespace uberlm::cuda
