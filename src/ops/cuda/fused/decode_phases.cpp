// The unfused launches the fused decode phases replace (their tests' and kernel_bench's reference); host code,
// apart from the kernel file because errors are reported through fmt (cuda_check.h), which nvcc cannot compile.
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/fused/decode_phases.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

namespace {

GemvTuning tuning_of(const LinearPhase& l) {
  return {8, 4, l.row_tiles, l.k_split, GemvPipeline::AsyncCopy};
}

void launch_unfused(const DecodePhase& p, const DeviceChunks& chunks, cudaStream_t stream) {
  const int64_t tokens = chunks.count;
  switch (p.kind) {
    case DecodePhaseKind::AddRmsNorm: {
      const NormPhase& n = p.norm;
      CUDA_CHECK(launch_add_rms_norm(n.x, n.delta, nullptr, tokens, n.dim, n.weight, n.offset, n.eps, n.out,
                                     n.out_stride, stream));
      if (n.snapshot) {
        CUDA_CHECK(cudaMemcpyAsync(n.snapshot, n.x, tokens * n.dim * sizeof(float), cudaMemcpyDeviceToDevice, stream));
      }
      return;
    }
    case DecodePhaseKind::Linear: {
      const LinearPhase& l = p.linear;
      Nvfp4GemvTarget targets[4];
      for (int i = 0; i < l.count; ++i) targets[i] = {l.weights[i], l.outputs[i]};
      gemv_nvfp4_multi_tuned(targets, l.count, l.x, tokens, DType::F32, tuning_of(l), stream);
      return;
    }
    case DecodePhaseKind::LinearSwiglu: {
      const LinearPhase& l = p.linear;
      gemv_nvfp4_swiglu_tuned(l.weights[0], l.weights[1], l.x, tokens, l.swiglu_out, l.swiglu_stride, tuning_of(l),
                              stream);
      return;
    }
    case DecodePhaseKind::AttentionPrep: {
      const AttentionPrepPhase& a = p.attention_prep;
      CUDA_CHECK(launch_qk_norm_rope_kv_append(a.q_proj, a.k, a.positions, tokens, a.shape, a.inv_freq, a.q_norm,
                                               a.k_norm, a.query, a.cache, stream));
      return;
    }
    case DecodePhaseKind::Attention: {
      const AttentionPhase& a = p.attention;
      CUDA_CHECK(launch_attention_decode(a.query, a.slots, a.positions, tokens, a.num_heads, a.block_tables, a.layout,
                                         a.key_cache, a.value_cache, a.splits, a.workspace, a.out, stream));
      return;
    }
    case DecodePhaseKind::DeltaNetHeads: {
      const DeltaNetPhase& n = p.delta_net;
      CUDA_CHECK(launch_gated_delta_net_layer(n.qkv, n.z, n.a, n.b, n.weights, chunks, tokens, {1, 1},
                                              GatedDeltaNetForm::ByChunkLength, n.dims, n.state, {nullptr, 0}, n.out,
                                              n.out_stride, stream));
      return;
    }
  }
}

}  // namespace

void launch_decode_phases_unfused(const DecodePhases& phases, const DeviceChunks& chunks, cudaStream_t stream) {
  for (int p = 0; p < phases.count; ++p) launch_unfused(phases.phase[p], chunks, stream);
}

}  // namespace uberlm::cuda
