#pragma once
// NVFP4 weights dequantised into a bf16 matrix on the GPU, for the large-M (prefill) GEMM of gemm.h.
// out[n, k] = e2m1(n, k) * e4m3(n, k / 16), without the global scale: the product has at most 6
// significant bits, so it is exact in bf16, and the caller applies the global scale once to the fp32
// GEMM result (cuBLAS's alpha), as the GEMV applies it to its fp32 sums.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/nvfp4.h"

namespace uberlm::cuda {

// weight: device NVFP4 [N, K], codes in the GEMV's tiled order (packed 8-byte aligned); out: device bf16
// [N, K], 32-byte aligned. The caller checks shapes and pointers (gemm.cpp); returns the launch status.
cudaError_t launch_dequantize_nvfp4_bf16(const Nvfp4Weight& weight, void* out, cudaStream_t stream);

}  // namespace uberlm::cuda
