// The unfused launches the fused mixer replaces (its tests' and kernel_bench's reference); host code, apart from
// the kernel file because their errors are reported through fmt (cuda_check.h), which nvcc cannot compile.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused/gated_delta_net_mixer.h"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

void launch_gated_delta_net_mixer_unfused(const GatedDeltaNetMixerWeights& weights, const GatedDeltaNetDims& dims,
                                          const GatedDeltaNetState& state, const DeviceChunks& chunks, int64_t hidden,
                                          const GemvTuning& in_tuning, const GemvTuning& out_tuning,
                                          const GatedDeltaNetMixerBuffers& buffers, cudaStream_t stream) {
  const int64_t tokens = chunks.count;
  CUDA_CHECK(launch_add_rms_norm(buffers.x, buffers.delta, nullptr, tokens, hidden, weights.input_norm,
                                 weights.norm_offset, weights.norm_eps, buffers.h, weights.in_proj_qkv.cols, stream));
  const Nvfp4GemvTarget in[] = {{weights.in_proj_qkv, buffers.qkv},
                                {weights.in_proj_z, buffers.z},
                                {weights.in_proj_b, buffers.b},
                                {weights.in_proj_a, buffers.a}};
  gemv_nvfp4_multi_tuned(in, 4, buffers.h, tokens, DType::F32, in_tuning, stream);
  CUDA_CHECK(launch_gated_delta_net_layer(buffers.qkv, buffers.z, buffers.a, buffers.b, weights.core, chunks, tokens,
                                          {1, 1}, GatedDeltaNetForm::ByChunkLength, dims, state, {nullptr, 0},
                                          buffers.core_out, weights.out_proj.cols, stream));
  gemv_nvfp4_tuned(weights.out_proj, buffers.core_out, tokens, buffers.out, DType::F32, out_tuning, stream);
}

}  // namespace uberlm::cuda
