#pragma once
// RMS norms on the GPU (after ops/cpu/norm.h), fp32 math, bf16 output ready for the next linear layer.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

// The longest row launch_add_rms_norm takes (a block holds a row in registers).
inline constexpr int64_t kRmsNormMaxDim = 8192;

// x: fp32 [rows, dim]. When `delta` is set, first x += delta (the residual add, written back to x).
// out row r (bf16, rows `out_stride` elements apart) = x[src] * rsqrt(mean(x[src]^2) + eps) * (offset + w),
// src = row_index ? row_index[r] : r. offset is 0 (plain weight) or 1 (Qwen3.5's 1 + w).
// row_index and delta are not used together. 1 <= dim <= kRmsNormMaxDim.
cudaError_t launch_add_rms_norm(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                                const float* weight, float offset, float eps, void* out, int64_t out_stride,
                                cudaStream_t stream);

}  // namespace uberlm::cuda
