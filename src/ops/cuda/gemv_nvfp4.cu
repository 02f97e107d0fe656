#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_launch.cuh"
#include "ops/cuda/gemv_nvfp4.cuh"

namespace uberlm::cuda::detail {

cudaError_t launch_gemv_nvfp4(const Nvfp4Weight& weight, const void* x, int m, void* y, bool y_is_bf16,
                              const GemvTuning& tuning, cudaStream_t stream) {
  const Nvfp4Format format{weight.packed, weight.scales, weight.cols, weight.global_scale * 128.0f};
  return launch_gemv<Nvfp4Format, GemvShape<4, 1>, GemvShape<8, 1>, GemvShape<2, 2>, GemvShape<4, 2>>(
      format, x, m, weight.rows, weight.cols, y, y_is_bf16, tuning, stream);
}

}  // namespace uberlm::cuda::detail
