#pragma once
// The NVFP4 small-M GEMM on Hopper's warpgroup MMA (gemm_nvfp4_wgmma.cu): y[m, N] = x[m, K] . W^T for m = 1..64
// tokens, the same values as gemv_nvfp4 (exact dequantised weights, fp32 sums in another order, fixed for a
// shape: the K split depends on N, K and the GPU, never on m). Branch wgmma-small-m, not yet chosen by the
// linear runner.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/nvfp4.h"

namespace uberlm::cuda {

inline constexpr int64_t kGemmWgmmaMaxM = 64;
inline constexpr int64_t kGemmWgmmaKMultiple = 64;

// Whether the current device runs the kernel (sm_90) for an [N, K] weight.
bool gemm_nvfp4_wgmma_runs(int64_t k);

// How many blocks share a row tile's K for an [N, K] weight on this GPU (about one block an SM), and the row tiles.
int gemm_nvfp4_wgmma_splits(int64_t n, int64_t k);
int64_t gemm_nvfp4_wgmma_row_tiles(int64_t n);

// With more than one split: the blocks' fp32 sums (splits x kGemmWgmmaMaxM x N floats at least) and a count per
// row tile (zero before the first launch; each launch leaves them zero). One launch at a time may use them.
struct GemmWgmmaWorkspace {
  float* partials = nullptr;
  int64_t partial_floats = 0;
  int* tile_arrivals = nullptr;
  int64_t tiles = 0;
};

// weight: NVFP4 [N, K] in the GEMV's tiled code order (K a multiple of 64; codes 16-byte aligned, scales 4-byte
// aligned); x: bf16 [m, K], 16-byte aligned; y: [m, N] of y_dtype (F32 or BF16). Throws uberlm::Error for what it
// cannot run, a workspace too small included.
void gemm_nvfp4_wgmma(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype,
                      const GemmWgmmaWorkspace& workspace, cudaStream_t stream);

namespace detail {
cudaError_t launch_gemm_nvfp4_wgmma(const Nvfp4Weight& weight, const void* x, int m, void* y, bool y_is_bf16,
                                    int splits, const GemmWgmmaWorkspace& workspace, cudaStream_t stream);
}  // namespace detail

}  // namespace uberlm::cuda
