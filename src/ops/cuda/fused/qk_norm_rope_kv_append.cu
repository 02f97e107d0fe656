#include "ops/cuda/kv_cache.cuh"
#include "ops/cuda/fused/qk_norm_rope_kv_append.cuh"
#include "ops/cuda/fused/qk_norm_rope_kv_append.h"

namespace uberlm::cuda {

namespace {
constexpr int kWarps = 4;

// One warp per (token, head), heads 0..H-1 the query heads and H..H+KV-1 the key heads.
__global__ void qk_norm_rope_kernel(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                    AttentionPrepShape shape, const float* inv_freq, const float* q_norm,
                                    const float* k_norm, float* query, KvCacheWrite cache) {
  begin_dependent_kernel();
  __shared__ float stage[kWarps][kAttentionMaxHeadDim];
  const int heads = shape.num_heads + shape.num_kv_heads;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (item >= num_tokens * heads) return;
  const int64_t t = item / heads;
  const int h = static_cast<int>(item % heads), lane = threadIdx.x % 32;
  const int hd = shape.head_dim, position = positions[t];
  const bool is_query = h < shape.num_heads;
  const int kv_head = h - shape.num_heads;
  const int64_t q_stride = static_cast<int64_t>(shape.num_heads) * hd * (shape.gated ? 2 : 1);
  const int64_t kv_offset_in_k = (t * shape.num_kv_heads + kv_head) * hd;
  const float* src = is_query ? q_proj + t * q_stride + static_cast<int64_t>(h) * hd * (shape.gated ? 2 : 1)
                              : k + kv_offset_in_k;
  const float* norm = shape.qk_norm ? (is_query ? q_norm : k_norm) : nullptr;
  float value[kRopeHeadDimsPerLane];
  if (!is_query) {  // the value head, loaded with the key so that both arrive in one round trip
#pragma unroll
    for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
      const int i = lane + 32 * e;
      value[e] = cache.v[kv_offset_in_k + (i < hd ? i : hd - 1)];
    }
  }
  float out[kRopeHeadDimsPerLane];
  warp_norm_rope_head(src, hd, norm, shape.norm_offset, shape.eps, shape.rotary_dim, inv_freq, position,
                      stage[threadIdx.x / 32], out);
  if (is_query) {
    float* dst = query + (t * shape.num_heads + h) * hd;
#pragma unroll
    for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
      if (lane + 32 * e < hd) dst[lane + 32 * e] = out[e];
    }
    return;
  }
  float* head = k + kv_offset_in_k;
  const int64_t dst = kv_offset(cache.block_tables, cache.layout, cache.slots[t], position, kv_head);
  __nv_bfloat16* key_cache = static_cast<__nv_bfloat16*>(cache.key_cache) + dst;
  __nv_bfloat16* value_cache = static_cast<__nv_bfloat16*>(cache.value_cache) + dst;
#pragma unroll
  for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
    const int i = lane + 32 * e;
    if (i >= hd) continue;
    head[i] = out[e];
    key_cache[i] = __float2bfloat16(out[e]);
    value_cache[i] = __float2bfloat16(value[e]);
  }
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
