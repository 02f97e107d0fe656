#pragma once
// Device parts of the attention input preparation, callable from fused kernels.
#include <cuda_bf16.h>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/fused/qk_norm_rope_kv_append.h"
#include "ops/cuda/kv_cache.cuh"
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda {

inline constexpr int kRopeHeadDimsPerLane = 8;  // one warp per head of up to 256 dims: lane holds dims lane + 32 e
static_assert(32 * kRopeHeadDimsPerLane == kAttentionMaxHeadDim);

// One warp: head = src[0, head_dim), optionally RMS-normed with weight (offset + w), then its first
// rotary_dim dims rotated at `position`: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), into out[e] for
// dim lane + 32 e. `stage` is this warp's head_dim floats of shared memory (the rotation pairs dims that
// other lanes hold). Loads are unconditional from clamped indices and issued before any use, so the head
// costs one memory round trip (a load under a branch, or after a store it might alias, is waited for).
__device__ __forceinline__ void warp_norm_rope_head(const float* src, int head_dim, const float* norm,
                                                    float norm_offset, float eps, int rotary_dim,
                                                    const float* inv_freq, int position, float* stage,
                                                    float (&out)[kRopeHeadDimsPerLane]) {
  const int lane = threadIdx.x % 32, half = rotary_dim / 2;
  const float* weight = norm ? norm : src;         // read but unused without a norm
  const float* freq = half > 0 ? inv_freq : src;  // likewise without rotation
  float x[kRopeHeadDimsPerLane], w[kRopeHeadDimsPerLane], f[kRopeHeadDimsPerLane];
#pragma unroll
  for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
    const int i = lane + 32 * e, clamped = i < head_dim ? i : head_dim - 1;
    const int j = i < half ? i : i - half;  // dim i's rotation pair index
    x[e] = src[clamped];
    w[e] = weight[clamped];
    f[e] = freq[half > 0 ? (j < half ? j : half - 1) : 0];
  }
  float sum = 0.0f;
#pragma unroll
  for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
    if (lane + 32 * e < head_dim) sum += x[e] * x[e];
  }
  const float scale = norm ? inverse_rms(warp_sum(sum), head_dim, eps) : 1.0f;
#pragma unroll
  for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
    const int i = lane + 32 * e;
    if (i < head_dim) stage[i] = norm ? x[e] * scale * (norm_offset + w[e]) : x[e];
  }
  __syncwarp();
#pragma unroll
  for (int e = 0; e < kRopeHeadDimsPerLane; ++e) {
    const int i = lane + 32 * e;
    if (i >= head_dim) continue;
    out[e] = stage[i];
    if (i >= rotary_dim) continue;
    const int j = i < half ? i : i - half;
    const float angle = static_cast<float>(position) * f[e];
    const float c = cosf(angle), s = sinf(angle);
    const float x1 = stage[j], x2 = stage[j + half];
    out[e] = i < half ? x1 * c - x2 * s : x2 * c + x1 * s;
  }
  __syncwarp();
}

// Item `item` of launch_qk_norm_rope_kv_append by one warp: token item / (H + KV), head item % (H + KV), heads
// 0..H-1 the query heads and H..H+KV-1 the key heads (with their values). `stage` is the warp's
// kAttentionMaxHeadDim floats of shared memory. Its inputs (q_proj, k, v) must be ready: the caller waits first.
__device__ __forceinline__ void qk_norm_rope_kv_append_item(const float* q_proj, float* k, const int32_t* positions,
                                                            int64_t item, const AttentionPrepShape& shape,
                                                            const float* inv_freq, const float* q_norm,
                                                            const float* k_norm, float* query,
                                                            const KvCacheWrite& cache, float* stage) {
  const int heads = shape.num_heads + shape.num_kv_heads;
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
  warp_norm_rope_head(src, hd, norm, shape.norm_offset, shape.eps, shape.rotary_dim, inv_freq, position, stage,
                      out);
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

}  // namespace uberlm::cuda
