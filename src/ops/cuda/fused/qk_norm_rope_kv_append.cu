#include "ops/cuda/fused/qk_norm_rope_kv_append.cuh"
#include "ops/cuda/fused/qk_norm_rope_kv_append.h"

namespace uberlm::cuda {

namespace {
constexpr int kWarps = 4;

// One warp per (token, head): qk_norm_rope_kv_append_item.
__global__ void qk_norm_rope_kernel(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                    AttentionPrepShape shape, const float* inv_freq, const float* q_norm,
                                    const float* k_norm, float* query, KvCacheWrite cache) {
  begin_dependent_kernel();
  __shared__ float stage[kWarps][kAttentionMaxHeadDim];
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= num_tokens * (shape.num_heads + shape.num_kv_heads)) return;
  qk_norm_rope_kv_append_item(q_proj, k, positions, item, shape, inv_freq, q_norm, k_norm, query, cache,
                              stage[threadIdx.x / 32]);
}
}  // namespace

cudaError_t launch_qk_norm_rope_kv_append(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                const AttentionPrepShape& shape, const float* inv_freq, const float* q_norm,
                                const float* k_norm, float* query, const KvCacheWrite& cache, cudaStream_t stream) {
  if (cache.layout.num_kv_heads != shape.num_kv_heads || cache.layout.head_dim != shape.head_dim) {
    return cudaErrorInvalidValue;
  }
  const int64_t items = num_tokens * (shape.num_heads + shape.num_kv_heads);
  if (items == 0) return cudaSuccess;
  if (shape.head_dim > kAttentionMaxHeadDim || shape.rotary_dim > shape.head_dim || shape.rotary_dim % 2 != 0) {
    return cudaErrorInvalidValue;
  }
  return launch_dependent(qk_norm_rope_kernel, blocks_for(items, kWarps), kWarps * 32, 0, stream, q_proj, k, positions,
                          num_tokens, shape, inv_freq, q_norm, k_norm, query, cache);
}

}  // namespace uberlm::cuda
