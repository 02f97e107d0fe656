#pragma once
// The NVFP4 small-M GEMM on Hopper's warpgroup MMA (gemm_nvfp4_wgmma.cu): y[m, N] = x[m, K] . W^T for m = 1..128
// tokens and up to kGemmWgmmaMaxTargets weights of one K in one launch (q/k/v, gate/up), the same values as
// gemv_nvfp4 (exact dequantised weights, fp32 sums in another order, fixed for a launch shape: the K split depends
// on the targets' rows, K and the GPU, never on m). The weights are in the wgmma fragment order
// (nvfp4_wgmma_layout.h). The linear runner takes it for 17..128-row products (runtime/cuda/linear.h).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"

namespace uberlm::cuda {

inline constexpr int64_t kGemmWgmmaMaxM = 128;
inline constexpr int kGemmWgmmaMaxSplits = 8;
inline constexpr int kGemmWgmmaMaxTargets = 4;

// An [N, K] NVFP4 weight in the wgmma fragment order (K a multiple of 64; tiles 16-byte aligned).
struct Nvfp4WgmmaWeight {
  int64_t rows = 0, cols = 0;
  const uint8_t* tiles = nullptr;
  float global_scale = 0.0f;
};

struct Nvfp4WgmmaTarget {
  Nvfp4WgmmaWeight weight;
  void* y;  // [m, weight.rows]
};

// Whether the current device runs the kernel (sm_90).
bool gemm_nvfp4_wgmma_device_runs();

// The kernel's token count N for m tokens (1..kGemmWgmmaMaxM): 8, 16, 32, 64 or 128, the smallest >= m.
int gemm_nvfp4_wgmma_tokens_bucket(int64_t m);

// A block's rows are a row tile (128) of one target: a target of N rows has gemm_nvfp4_wgmma_row_tiles(N). How many
// blocks share a row tile's K for a launch of `row_tiles` over K on this GPU (the blocks two an SM hold).
int64_t gemm_nvfp4_wgmma_row_tiles(int64_t n);
int gemm_nvfp4_wgmma_splits(int64_t row_tiles, int64_t k);
// Floats of partial sums a launch of `row_tiles` and m tokens with `splits` needs in its workspace; and what
// serves every launch of at most `row_tiles` at any m with the default splits.
int64_t gemm_nvfp4_wgmma_partial_floats(int64_t row_tiles, int64_t m, int splits);
int64_t gemm_nvfp4_wgmma_workspace_floats(int64_t row_tiles);

// With more than one split: the blocks' fp32 sums and a count per row tile of the launch (zero before the first
// launch; each launch leaves them zero). One launch at a time may use them.
struct GemmWgmmaWorkspace {
  float* partials = nullptr;
  int64_t partial_floats = 0;
  int* tile_arrivals = nullptr;
  int64_t tiles = 0;
};

// x: bf16 [m, K], 16-byte aligned; each target's y [m, N] of y_dtype (F32 or BF16). `splits`
// (1..kGemmWgmmaMaxSplits) is normally gemm_nvfp4_wgmma_splits of the targets' row tiles. Throws uberlm::Error
// for what it cannot run, a workspace too small included.
void gemm_nvfp4_wgmma(const Nvfp4WgmmaTarget* targets, int count, const void* x, int64_t m, DType y_dtype, int splits,
                      const GemmWgmmaWorkspace& workspace, cudaStream_t stream);

namespace detail {
struct GemmWgmmaLaunch {
  const Nvfp4WgmmaTarget* targets;
  int count;
  const void* x;
  int m;
  bool y_is_bf16;
  int splits;
  const GemmWgmmaWorkspace* workspace;
};
cudaError_t launch_gemm_nvfp4_wgmma(const GemmWgmmaLaunch& launch, cudaStream_t stream);
}  // namespace detail

}  // namespace uberlm::cuda
