#pragma once
// Elementwise ops on the GPU: SwiGLU, bias and residual adds. bf16 outputs
// feed the next linear layer, whose input rows are `out_stride` elements apart (K padded for the GEMV).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace uberlm::cuda {

// gate, up: [rows, cols] of in_dtype (F32, or BF16 as prompt steps' products write them; others are
// cudaErrorInvalidValue); out: bf16 [rows, out_stride] = silu(gate) * up, computed in fp32 and rounded once.
cudaError_t launch_swiglu(const void* gate, const void* up, DType in_dtype, int64_t rows, int64_t cols, void* out,
                          int64_t out_stride, cudaStream_t stream);

// y: fp32 [rows, cols] += bias [cols].
cudaError_t launch_add_bias(float* y, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream);

// x: fp32 [count] += delta [count].
cudaError_t launch_add_inplace(float* x, const float* delta, int64_t count, cudaStream_t stream);

}  // namespace uberlm::cuda
