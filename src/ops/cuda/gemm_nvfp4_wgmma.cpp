// Argument checks of the NVFP4 small-M wgmma GEMM (gemm_nvfp4_wgmma.cu launches it).
#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/gemm_nvfp4_wgmma.h"

#include "core/error.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/cuda_check.h"

namespace uberlm::cuda {

bool gemm_nvfp4_wgmma_runs(int64_t k) {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return false;
  }
  return major == 9 && minor == 0 && k > 0 && k % kGemmWgmmaKMultiple == 0;
}

void gemm_nvfp4_wgmma(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype,
                      const GemmWgmmaWorkspace& workspace, cudaStream_t stream) {
  if (m < 1 || m > kGemmWgmmaMaxM) fail("gemm_nvfp4_wgmma: {} tokens (1..{})", m, kGemmWgmmaMaxM);
  if (!gemm_nvfp4_wgmma_runs(weight.cols)) {
    fail("gemm_nvfp4_wgmma: needs an sm_90 GPU and K a multiple of {} (K = {})", kGemmWgmmaKMultiple, weight.cols);
  }
  if (weight.code_order != Nvfp4CodeOrder::GemvTiled) fail("gemm_nvfp4_wgmma: codes must be in the GEMV's tiled order");
  if (weight.rows < 1 || weight.packed == nullptr || weight.scales == nullptr || !aligned(weight.packed, 16) ||
      !aligned(weight.scales, 4)) {
    fail("gemm_nvfp4_wgmma: [{}, {}] weights must be device pointers, codes 16-byte and scales 4-byte aligned",
         weight.rows, weight.cols);
  }
  if (x == nullptr || !aligned(x, 16) || y == nullptr) fail("gemm_nvfp4_wgmma: x must be 16-byte aligned, y non-null");
  if (y_dtype != DType::F32 && y_dtype != DType::BF16) fail("gemm_nvfp4_wgmma: output must be F32 or BF16");
  const int splits = gemm_nvfp4_wgmma_splits(weight.rows, weight.cols);
  if (splits > 1 && (workspace.partials == nullptr || workspace.partial_floats < splits * m * weight.rows ||
                     workspace.tile_arrivals == nullptr || workspace.tiles < gemm_nvfp4_wgmma_row_tiles(weight.rows))) {
    fail("gemm_nvfp4_wgmma: [{}, {}] splits K {} ways and needs {} partial floats and {} tile counts", weight.rows,
         weight.cols, splits, splits * m * weight.rows, gemm_nvfp4_wgmma_row_tiles(weight.rows));
  }
  CUDA_CHECK(detail::launch_gemm_nvfp4_wgmma(weight, x, static_cast<int>(m), y, y_dtype == DType::BF16, splits,
                                             workspace, stream));
}

}  // namespace uberlm::cuda
#endif
