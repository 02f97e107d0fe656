// Argument checks of the NVFP4 small-M wgmma GEMM (gemm_nvfp4_wgmma.cu launches it).
#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/gemm_nvfp4_wgmma.h"

#include "core/error.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"

namespace uberlm::cuda {

bool gemm_nvfp4_wgmma_runs(int64_t n, int64_t k) {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return false;
  }
  return major == 9 && minor == 0 && n > 0 && k > 0 && n % kNvfp4WgmmaTileRows == 0 && k % kNvfp4WgmmaTileK == 0;
}

void gemm_nvfp4_wgmma(const Nvfp4WgmmaWeight& weight, const void* x, int64_t m, void* y, DType y_dtype, int splits,
                      const GemmWgmmaWorkspace& workspace, cudaStream_t stream) {
  if (m < 1 || m > kGemmWgmmaMaxM) fail("gemm_nvfp4_wgmma: {} tokens (1..{})", m, kGemmWgmmaMaxM);
  if (!gemm_nvfp4_wgmma_runs(weight.rows, weight.cols)) {
    fail("gemm_nvfp4_wgmma: [{}, {}] needs an sm_90 GPU and both sizes multiples of 64", weight.rows, weight.cols);
  }
  if (weight.tiles == nullptr || !aligned(weight.tiles, 16)) {
    fail("gemm_nvfp4_wgmma: [{}, {}] weight tiles must be a 16-byte aligned device pointer", weight.rows, weight.cols);
  }
  if (x == nullptr || !aligned(x, 16) || y == nullptr) fail("gemm_nvfp4_wgmma: x must be 16-byte aligned, y non-null");
  if (y_dtype != DType::F32 && y_dtype != DType::BF16) fail("gemm_nvfp4_wgmma: output must be F32 or BF16");
  if (splits < 1 || splits > kGemmWgmmaMaxSplits || splits > weight.cols / kNvfp4WgmmaTileK) {
    fail("gemm_nvfp4_wgmma: {} K splits for K = {} (1..{}, at most one a 64-wide chunk)", splits, weight.cols,
         kGemmWgmmaMaxSplits);
  }
  const int64_t floats = gemm_nvfp4_wgmma_partial_floats(weight.rows, m, splits);
  if (splits > 1 && (workspace.partials == nullptr || workspace.partial_floats < floats ||
                     workspace.tile_arrivals == nullptr || workspace.tiles < gemm_nvfp4_wgmma_row_tiles(weight.rows))) {
    fail("gemm_nvfp4_wgmma: [{}, {}] split {} ways needs {} partial floats and {} tile counts", weight.rows,
         weight.cols, splits, floats, gemm_nvfp4_wgmma_row_tiles(weight.rows));
  }
  CUDA_CHECK(detail::launch_gemm_nvfp4_wgmma(
      {&weight, x, static_cast<int>(m), y, y_dtype == DType::BF16, splits, &workspace}, stream));
}

}  // namespace uberlm::cuda
#endif
