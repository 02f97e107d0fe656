#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_bf16.cuh"
#include "ops/cuda/gemv_launch.cuh"

namespace uberlm::cuda::detail {

cudaError_t launch_gemv_bf16(const void* weight, int64_t n, int64_t k, const void* x, int m, void* y,
                             bool y_is_bf16, const GemvTuning& tuning, cudaStream_t stream) {
  const Bf16Format format{static_cast<const __nv_bfloat16*>(weight), k, 1.0f};
  return launch_gemv<Bf16Format, GemvShape<2, 1>, GemvShape<1, 2>>(format, x, m, n, k, y, y_is_bf16, tuning, stream);
}

}  // namespace uberlm::cuda::detail
