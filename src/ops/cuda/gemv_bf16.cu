#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_bf16.cuh"
#include "ops/cuda/gemv_launch.cuh"

namespace uberlm::cuda::detail {

cudaError_t launch_gemv_bf16(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int m,
                             bool y_is_bf16, const GemvTuning& tuning, cudaStream_t stream) {
  GemvSegments<Bf16Format> segments{};
  for (int i = 0; i < count; ++i) {
    segments.add({static_cast<const __nv_bfloat16*>(targets[i].weight), k, 1.0f}, targets[i].n, targets[i].y);
  }
  constexpr GemvPipeline kRegisters = GemvPipeline::Registers;
  return launch_gemv<Bf16Format, GemvShape<2, 1>, GemvShape<1, 2>, GemvShape<2, 1, kRegisters, true>,
                     GemvShape<1, 2, kRegisters, true>>(
      segments, x, m, k, GemvStoreEpilogue{y_is_bf16}, tuning, stream);
}

}  // namespace uberlm::cuda::detail
