#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_launch.cuh"
#include "ops/cuda/gemv_nvfp4.cuh"

namespace uberlm::cuda::detail {

cudaError_t launch_gemv_nvfp4(const Nvfp4GemvTarget* targets, int count, const void* x, int m, bool y_is_bf16,
                              const GemvTuning& tuning, cudaStream_t stream) {
  GemvSegments<Nvfp4Format> segments{};
  for (int i = 0; i < count; ++i) segments.add(nvfp4_format(targets[i].weight), targets[i].weight.rows, targets[i].y);
  constexpr GemvPipeline kAsync = GemvPipeline::AsyncCopy, kStream = GemvPipeline::BulkStream;
  return launch_gemv<Nvfp4Format, GemvShape<4, 1>, GemvShape<8, 1>, GemvShape<2, 2>, GemvShape<4, 2>,
                    GemvShape<4, 2, kAsync>, GemvShape<8, 2, kAsync>, GemvShape<8, 1, kAsync>, GemvShape<4, 1, kAsync>,
                    GemvShape<8, 1, kStream>, GemvShape<12, 1, kStream>,
                    GemvShape<2, 2, GemvPipeline::Registers, true>, GemvShape<4, 2, kAsync, true>>(
      segments, x, m, targets[0].weight.cols, GemvStoreEpilogue{y_is_bf16}, tuning, stream);
}

}  // namespace uberlm::cuda::detail
