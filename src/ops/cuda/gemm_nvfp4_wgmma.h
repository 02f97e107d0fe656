#pragma once
// The NVFP4 small-M GEMM on Hopper's warpgroup MMA (gemm_nvfp4_wgmma.cu): y[m, N] = x[m, K] . W^T for m = 1..64
// tokens, the same values as gemv_nvfp4 (exact dequantised weights, fp32 sums in another order, fixed for a
// shape: the K split depends on N, K and the GPU, never on m). The weights are in the wgmma fragment order
// (nvfp4_wgmma_layout.h). Not yet chosen by the linear runner (issue 14): tested against the CPU reference and
// measured by kernel_bench beside the GEMV.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace uberlm::cuda {

inline constexpr int64_t kGemmWgmmaMaxM = 64;
inline constexpr int kGemmWgmmaMaxSplits = 8;

// An [N, K] NVFP4 weight in the wgmma fragment order (N and K multiples of 64; tiles 16-byte aligned).
struct Nvfp4WgmmaWeight {
  int64_t rows = 0, cols = 0;
  const uint8_t* tiles = nullptr;
  float global_scale = 0.0f;
};

// Whether the current device runs the kernel (sm_90) for an [N, K] weight.
bool gemm_nvfp4_wgmma_runs(int64_t n, int64_t k);

// How many blocks share a row tile's K for an [N, K] weight on this GPU (the grid's blocks at two an SM), and the
// row tiles (of 128 weight rows).
int gemm_nvfp4_wgmma_splits(int64_t n, int64_t k);
int64_t gemm_nvfp4_wgmma_row_tiles(int64_t n);
// Floats of partial sums a launch of m tokens with `splits` needs in its workspace.
int64_t gemm_nvfp4_wgmma_partial_floats(int64_t n, int64_t m, int splits);

// With more than one split: the blocks' fp32 sums and a count per row tile (zero before the first launch; each
// launch leaves them zero). One launch at a time may use them.
struct GemmWgmmaWorkspace {
  float* partials = nullptr;
  int64_t partial_floats = 0;
  int* tile_arrivals = nullptr;
  int64_t tiles = 0;
};

// x: bf16 [m, K], 16-byte aligned; y: [m, N] of y_dtype (F32 or BF16). `splits` (1..kGemmWgmmaMaxSplits) is
// normally gemm_nvfp4_wgmma_splits(N, K). Throws uberlm::Error for what it cannot run, a workspace too small
// included.
void gemm_nvfp4_wgmma(const Nvfp4WgmmaWeight& weight, const void* x, int64_t m, void* y, DType y_dtype, int splits,
                      const GemmWgmmaWorkspace& workspace, cudaStream_t stream);

namespace detail {
struct GemmWgmmaLaunch {
  const Nvfp4WgmmaWeight* weight;
  const void* x;
  int m;
  void* y;
  bool y_is_bf16;
  int splits;
  const GemmWgmmaWorkspace* workspace;
};
cudaError_t launch_gemm_nvfp4_wgmma(const GemmWgmmaLaunch& launch, cudaStream_t stream);
}  // namespace detail

}  // namespace uberlm::cuda
