#pragma once
// Host API of the decode GEMV / small-M GEMM: y[M, N] = x[M, K] . W^T for M = 1..64, bf16 activations,
// fp32 accumulation, fp32 or bf16 output. All pointers are device pointers; the work is queued on
// `stream`. Shapes or alignments the kernels cannot do throw uberlm::Error before anything runs.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/nvfp4.h"

namespace uberlm::cuda {

inline constexpr int64_t kGemvMaxM = 64;
inline constexpr int64_t kGemvKMultiple = 32;

// weight: NVFP4 [N, K] (packed 16-byte aligned, scales 2-byte aligned); x: bf16 [m, K], 16-byte
// aligned; y: [m, N] of y_dtype (F32 or BF16).
void gemv_nvfp4(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype, cudaStream_t stream);

// weight: bf16 [n, k], 16-byte aligned; otherwise as gemv_nvfp4.
void gemv_bf16(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
               cudaStream_t stream);

namespace detail {
// The kernel launches (gemv_nvfp4.cu, gemv_bf16.cu), called after gemv.cpp's checks; they return the
// launch status. Kept apart because nvcc cannot compile fmt, which the error path uses.
cudaError_t launch_gemv_nvfp4(const Nvfp4Weight& weight, const void* x, int m, void* y, bool y_is_bf16,
                              cudaStream_t stream);
cudaError_t launch_gemv_bf16(const void* weight, int64_t n, int64_t k, const void* x, int m, void* y,
                             bool y_is_bf16, cudaStream_t stream);
}  // namespace detail

}  // namespace uberlm::cuda
