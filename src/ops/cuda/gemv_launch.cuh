#pragma once
// The choice of tile shape for the standalone GEMV launches (gemv_nvfp4.cu, gemv_bf16.cu).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/gemv_tile.cuh"

namespace uberlm::cuda {

template <class Format, int kTokenGroups, int kRowGroups>
cudaError_t launch_gemv_tile(const Format& format, const void* x, int m, int64_t n, int64_t k, void* y,
                             bool y_is_bf16, cudaStream_t stream) {
  constexpr int kWarps = 4, kUnroll = Format::kUnroll;
  constexpr int64_t kRowsPerBlock = kRowGroups * kGemvRowsPerGroup;
  const dim3 grid(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
  gemv_kernel<Format, kTokenGroups, kRowGroups, kWarps, kUnroll>
      <<<grid, kWarps * 32, 0, stream>>>(format, static_cast<const __nv_bfloat16*>(x), m, n, k, y, y_is_bf16);
  return cudaGetLastError();
}

// Token groups of 16 cover M; with more than 4 tokens each warp takes two row groups, so that every
// activation fragment it loads serves 16 weight rows.
template <class Format>
cudaError_t launch_gemv(const Format& format, const void* x, int m, int64_t n, int64_t k, void* y, bool y_is_bf16,
                        cudaStream_t stream) {
  if (m <= 4) return launch_gemv_tile<Format, 1, 1>(format, x, m, n, k, y, y_is_bf16, stream);
  if (m <= 16) return launch_gemv_tile<Format, 1, 2>(format, x, m, n, k, y, y_is_bf16, stream);
  if (m <= 32) return launch_gemv_tile<Format, 2, 2>(format, x, m, n, k, y, y_is_bf16, stream);
  if (m <= 48) return launch_gemv_tile<Format, 3, 2>(format, x, m, n, k, y, y_is_bf16, stream);
  return launch_gemv_tile<Format, 4, 2>(format, x, m, n, k, y, y_is_bf16, stream);
}

}  // namespace uberlm::cuda
