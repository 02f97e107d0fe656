#pragma once
// Device parts of the decode attention (attention_decode.h), callable from fused kernels: a block of the partial
// pass over a split of positions, and a row of the combine pass.
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/kv_cache.cuh"

namespace uberlm::cuda {

inline constexpr int kAttentionPartialWarps = 4;
// Query heads a block takes of those sharing one kv head: the standalone kernel's. Each head's softmax is its own,
// so a block of fewer (a persistent kernel's, for its registers) computes the same bits.
inline constexpr int kAttentionMaxGroup = 8;
inline constexpr int kAttentionDimsPerLane = kAttentionMaxHeadDim / 32;  // lane i holds dims i, i + 32, ...

// Blocks a kv head's query heads take, kGroup a block.
template <int kGroup = kAttentionMaxGroup>
__host__ __device__ inline int attention_head_chunks(int num_heads, int num_kv_heads) {
  return (num_heads / num_kv_heads + kGroup - 1) / kGroup;
}

// The partial block's shared memory (the kernel's static, or a persistent kernel's scratch).
template <int kGroup = kAttentionMaxGroup>
struct AttentionPartialShared {
  float acc[kAttentionPartialWarps][kGroup][kAttentionMaxHeadDim];
  float max[kAttentionPartialWarps][kGroup], sum[kAttentionPartialWarps][kGroup];
};

// Block (t, chunk, split) of the partial pass over num_tokens tokens: each of kAttentionPartialWarps warps runs an
// online softmax over every kAttentionPartialWarps-th position of the split for up to kGroup query heads (kv head
// chunk / attention_head_chunks<kGroup>); the block merges its warps and writes the split's partial: acc
// (unnormalised), max and sum. A block of more warps (a persistent kernel's) leaves the others out of the softmax;
// they help with the merge. Its inputs (query, the caches) must be ready: the caller waits first.
template <int kGroup = kAttentionMaxGroup>
__device__ __forceinline__ void attention_partial_block(const float* query, const int32_t* slots,
                                                        const int32_t* positions, int num_heads,
                                                        const int32_t* block_tables, const PagedKvLayout& layout,
                                                        const __nv_bfloat16* key_cache,
                                                        const __nv_bfloat16* value_cache, int splits, float* workspace,
                                                        int64_t num_tokens, int64_t t, int chunk, int split,
                                                        AttentionPartialShared<kGroup>& shared) {
  constexpr int kWarps = kAttentionPartialWarps, kMaxGroup = kGroup, kDimsPerLane = kAttentionDimsPerLane;
  const int chunks_per_kv = attention_head_chunks<kGroup>(num_heads, layout.num_kv_heads);
  const int kv_head = chunk / chunks_per_kv;
  const int group = num_heads / layout.num_kv_heads;
  const int first_head = kv_head * group + (chunk % chunks_per_kv) * kMaxGroup;
  const int heads_here = min(kMaxGroup, kv_head * group + group - first_head);
  const int hd = layout.head_dim;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const bool in_softmax = warp < kWarps;
  const int slot = slots[t], length = positions[t] + 1;
  const int per_split = (length + splits - 1) / splits;
  const int begin = split * per_split, end = min(length, begin + per_split);
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));

  float q[kMaxGroup][kDimsPerLane], acc[kMaxGroup][kDimsPerLane], run_max[kMaxGroup], run_sum[kMaxGroup];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    run_max[g] = -INFINITY;
    run_sum[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      q[g][i] = (g < heads_here && d < hd) ? query[(t * num_heads + first_head + g) * hd + d] : 0.0f;
      acc[g][i] = 0.0f;
    }
  }
  // Software pipeline over the warp's positions: the next position's key and value (and its block table
  // entry) are requested before this position's arithmetic, which then hides their latency instead of
  // waiting for two dependent round trips per position.
  float k[kDimsPerLane], v[kDimsPerLane], k_next[kDimsPerLane], v_next[kDimsPerLane];
  const auto load_kv = [&](int p, float (&keys)[kDimsPerLane], float (&values)[kDimsPerLane]) {
    const int64_t offset = kv_offset(block_tables, layout, slot, p, kv_head);
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i, clamped = d < hd ? d : hd - 1;
      keys[i] = __bfloat162float(key_cache[offset + clamped]);
      values[i] = __bfloat162float(value_cache[offset + clamped]);
    }
  };
  const int first = in_softmax ? begin + warp : end;
  if (first < end) load_kv(first, k, v);
  for (int p = first; p < end; p += kWarps) {
    if (p + kWarps < end) load_kv(p + kWarps, k_next, v_next);
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      if (lane + 32 * i >= hd) k[i] = v[i] = 0.0f;
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= heads_here) break;
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) dot += q[g][i] * k[i];
      const float score = warp_sum(dot) * scale;  // q·k / sqrt(head_dim)
      const float new_max = fmaxf(run_max[g], score);
      const float correction = expf(run_max[g] - new_max), weight = expf(score - new_max);
      run_sum[g] = run_sum[g] * correction + weight;
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) acc[g][i] = acc[g][i] * correction + weight * v[i];
      run_max[g] = new_max;
    }
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      k[i] = k_next[i];
      v[i] = v_next[i];
    }
  }
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (!in_softmax) break;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) shared.acc[warp][g][lane + 32 * i] = acc[g][i];
    if (lane == 0) {
      shared.max[warp][g] = run_max[g];
      shared.sum[warp][g] = run_sum[g];
    }
  }
  __syncthreads();
  // Merge the warps: m = max_w m_w; sum = sum_w s_w e^(m_w - m); acc = sum_w acc_w e^(m_w - m).
  for (int item = threadIdx.x; item < heads_here * hd; item += blockDim.x) {
    const int g = item / hd, d = item % hd;
    float merged_max = -INFINITY;
    for (int w = 0; w < kWarps; ++w) merged_max = fmaxf(merged_max, shared.max[w][g]);
    float merged_sum = 0.0f, merged_acc = 0.0f;
    if (merged_max != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float factor = expf(shared.max[w][g] - merged_max);
        merged_sum += shared.sum[w][g] * factor;
        merged_acc += shared.acc[w][g][d] * factor;
      }
    }
    const int64_t part = (t * num_heads + first_head + g) * splits + split;  // [T, H, splits]
    float* part_acc = workspace;
    float* part_stats = workspace + num_tokens * static_cast<int64_t>(num_heads) * splits * hd;
    part_acc[part * hd + d] = merged_acc;
    if (d == 0) {
      part_stats[2 * part] = merged_max;
      part_stats[2 * part + 1] = merged_sum;
    }
  }
}

// Row th = (token, head) of the combine pass, by a block of any width: attended = sum_s acc_s e^(m_s - m) / sum_s
// l_s e^(m_s - m), then the output gate. kSplitsInRegisters: every split's partial is loaded (from clamped indices,
// into registers) before any is used, so the combine waits for one memory round trip, not one per split (the
// standalone kernel); else the splits are read twice, for the max and then for the sums, in the same order (the same
// bits, in a few registers: a persistent kernel's). Its inputs must be ready: the caller waits first.
template <bool kSplitsInRegisters = true>
__device__ __forceinline__ void attention_combine_row(const float* workspace, int64_t num_tokens, int num_heads,
                                                      int head_dim, int splits, const AttentionOutput& out,
                                                      int64_t th) {
  const float* part_acc = workspace;
  const float* part_stats = workspace + num_tokens * num_heads * splits * head_dim;
  const int64_t t = th / num_heads, h = th % num_heads;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    const float gate = out.gate ? out.gate[t * out.gate_stride + h * out.gate_head_stride + d] : 0.0f;
    float sum = 0.0f, acc = 0.0f;
    if constexpr (kSplitsInRegisters) {
      float max_s[kAttentionMaxSplits], sum_s[kAttentionMaxSplits], acc_s[kAttentionMaxSplits];
#pragma unroll
      for (int s = 0; s < kAttentionMaxSplits; ++s) {
        const int64_t part = th * splits + (s < splits ? s : splits - 1);
        max_s[s] = s < splits ? part_stats[2 * part] : -INFINITY;
        sum_s[s] = part_stats[2 * part + 1];
        acc_s[s] = part_acc[part * head_dim + d];
      }
      float merged_max = -INFINITY;
#pragma unroll
      for (int s = 0; s < kAttentionMaxSplits; ++s) merged_max = fmaxf(merged_max, max_s[s]);
#pragma unroll
      for (int s = 0; s < kAttentionMaxSplits; ++s) {
        if (s >= splits || max_s[s] == -INFINITY) continue;
        const float factor = expf(max_s[s] - merged_max);
        sum += sum_s[s] * factor;
        acc += acc_s[s] * factor;
      }
    } else {
      float merged_max = -INFINITY;
      for (int s = 0; s < splits; ++s) merged_max = fmaxf(merged_max, part_stats[2 * (th * splits + s)]);
      for (int s = 0; s < splits; ++s) {
        const int64_t part = th * splits + s;
        const float max_s = part_stats[2 * part];
        if (max_s == -INFINITY) continue;
        const float factor = expf(max_s - merged_max);
        sum += part_stats[2 * part + 1] * factor;
        acc += part_acc[part * head_dim + d] * factor;
      }
    }
    float value = acc / sum;
    if (out.gate) value *= sigmoidf_exact(gate);
    static_cast<__nv_bfloat16*>(out.out)[t * out.out_stride + h * head_dim + d] = __float2bfloat16(value);
  }
}

}  // namespace uberlm::cuda
