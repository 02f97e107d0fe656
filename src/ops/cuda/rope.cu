#include "ops/cuda/kv_cache.cuh"
#include "ops/cuda/rope.cuh"
#include "ops/cuda/rope.h"

namespace uberlm::cuda {

namespace {
// One warp per (token, head), heads 0..H-1 the query heads and H..H+KV-1 the key heads.
__global__ void qk_norm_rope_kernel(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                    AttentionPrepShape shape, const float* inv_freq, const float* q_norm,
                                    const float* k_norm, float* query, KvCacheWrite cache) {
  begin_dependent_kernel();
  const int heads = shape.num_heads + shape.num_kv_heads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (item >= num_tokens * heads) return;
  const int64_t t = item / heads;
  const int h = static_cast<int>(item % heads);
  const int hd = shape.head_dim, position = positions[t];
  if (h < shape.num_heads) {
    const int64_t q_stride = static_cast<int64_t>(shape.num_heads) * hd * (shape.gated ? 2 : 1);
    const float* src = q_proj + t * q_stride + static_cast<int64_t>(h) * hd * (shape.gated ? 2 : 1);
    float* dst = query + (t * shape.num_heads + h) * hd;
    warp_norm_rope_head(src, dst, hd, shape.qk_norm ? q_norm : nullptr, shape.norm_offset, shape.eps,
                        shape.rotary_dim, inv_freq, position);
  } else {
    const int kv_head = h - shape.num_heads;
    const int64_t src = (t * shape.num_kv_heads + kv_head) * hd;
    float* head = k + src;
    warp_norm_rope_head(head, head, hd, shape.qk_norm ? k_norm : nullptr, shape.norm_offset, shape.eps,
                        shape.rotary_dim, inv_freq, position);
    const int64_t dst = kv_offset(cache.block_tables, cache.layout, cache.slots[t], position, kv_head);
    __nv_bfloat16* key_cache = static_cast<__nv_bfloat16*>(cache.key_cache) + dst;
    __nv_bfloat16* value_cache = static_cast<__nv_bfloat16*>(cache.value_cache) + dst;
    for (int i = threadIdx.x % 32; i < hd; i += 32) {
      key_cache[i] = __float2bfloat16(head[i]);
      value_cache[i] = __float2bfloat16(cache.v[src + i]);
    }
  }
}
}  // namespace

cudaError_t launch_qk_norm_rope(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                const AttentionPrepShape& shape, const float* inv_freq, const float* q_norm,
                                const float* k_norm, float* query, const KvCacheWrite& cache, cudaStream_t stream) {
  if (cache.layout.num_kv_heads != shape.num_kv_heads || cache.layout.head_dim != shape.head_dim) {
    return cudaErrorInvalidValue;
  }
  const int64_t items = num_tokens * (shape.num_heads + shape.num_kv_heads);
  if (items == 0) return cudaSuccess;
  constexpr int kWarps = 4;
  return launch_dependent(qk_norm_rope_kernel, blocks_for(items, kWarps), kWarps * 32, 0, stream, q_proj, k, positions,
                          num_tokens, shape, inv_freq, q_norm, k_norm, query, cache);
}

}  // namespace uberlm::cuda
