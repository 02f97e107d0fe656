// Argument checks of the NVFP4 small-M wgmma GEMM (gemm_nvfp4_wgmma.cu launches it).
#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/gemm_nvfp4_wgmma.h"

#include "core/error.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_capability.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"

namespace uberlm::cuda {

bool gemm_nvfp4_wgmma_device_runs() { return current_device_is_sm90(); }

int gemm_nvfp4_wgmma_tokens_bucket(int64_t m) {
  if (m < 1 || m > kGemmWgmmaMaxM) fail("gemm_nvfp4_wgmma: {} tokens (1..{})", m, kGemmWgmmaMaxM);
  return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : m <= 64 ? 64 : 128;
}

void gemm_nvfp4_wgmma(const Nvfp4WgmmaTarget* targets, int count, const void* x, int64_t m, DType y_dtype, int splits,
                      const GemmWgmmaWorkspace& workspace, cudaStream_t stream) {
  if (m < 1 || m > kGemmWgmmaMaxM) fail("gemm_nvfp4_wgmma: {} tokens (1..{})", m, kGemmWgmmaMaxM);
  if (count < 1 || count > kGemmWgmmaMaxTargets) fail("gemm_nvfp4_wgmma: {} targets (1..{})", count, kGemmWgmmaMaxTargets);
  if (!gemm_nvfp4_wgmma_device_runs()) fail("gemm_nvfp4_wgmma: needs an sm_90 GPU");
  const int64_t k = targets[0].weight.cols;
  int64_t row_tiles = 0;
  for (int t = 0; t < count; ++t) {
    const Nvfp4WgmmaWeight& w = targets[t].weight;
    if (w.cols != k || !nvfp4_wgmma_layout_fits(w.rows, w.cols)) {
      fail("gemm_nvfp4_wgmma: target {} is [{}, {}]: every target needs the first's K ({}), a multiple of 64", t,
           w.rows, w.cols, k);
    }
    if (w.tiles == nullptr || !aligned(w.tiles, 16) || targets[t].y == nullptr) {
      fail("gemm_nvfp4_wgmma: target {} [{}, {}] needs 16-byte aligned tiles and an output", t, w.rows, w.cols);
    }
    row_tiles += gemm_nvfp4_wgmma_row_tiles(w.rows);
  }
  if (x == nullptr || !aligned(x, 16)) fail("gemm_nvfp4_wgmma: x must be 16-byte aligned");
  if (y_dtype != DType::F32 && y_dtype != DType::BF16) fail("gemm_nvfp4_wgmma: output must be F32 or BF16");
  if (splits < 1 || splits > kGemmWgmmaMaxSplits || splits > k / kNvfp4WgmmaTileK) {
    fail("gemm_nvfp4_wgmma: {} K splits for K = {} (1..{}, at most one a 64-wide chunk)", splits, k,
         kGemmWgmmaMaxSplits);
  }
  const int64_t floats = gemm_nvfp4_wgmma_partial_floats(row_tiles, m, splits);
  if (splits > 1 && (workspace.partials == nullptr || workspace.partial_floats < floats ||
                     workspace.tile_arrivals == nullptr || workspace.tiles < row_tiles)) {
    fail("gemm_nvfp4_wgmma: {} row tiles split {} ways need {} partial floats and {} tile counts", row_tiles, splits,
         floats, row_tiles);
  }
  CUDA_CHECK(detail::launch_gemm_nvfp4_wgmma(
      {targets, count, x, static_cast<int>(m), y_dtype == DType::BF16, splits, &workspace}, stream));
}

}  // namespace uberlm::cuda
#endif
