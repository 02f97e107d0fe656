#include <cfloat>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/kv_cache.cuh"

namespace uberlm::cuda {

namespace {
constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;                               // query heads per block sharing one kv head
constexpr int kDimsPerLane = kAttentionMaxHeadDim / 32;    // lane i holds dims i, i + 32, ...

// Grid (token, kv head x head chunk, split). Each warp runs an online softmax over every 4th position of
// the split for up to kMaxGroup query heads; the block merges its warps and writes the split's partial:
// acc (unnormalised), max and sum.
__global__ void __launch_bounds__(kWarps * 32) attention_partial_kernel(
    const float* query, const int32_t* slots, const int32_t* positions, int num_heads, const int32_t* block_tables,
    PagedKvLayout layout, const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache, int splits,
    float* workspace) {
  begin_dependent_kernel();
  __shared__ float shared_acc[kWarps][kMaxGroup][kAttentionMaxHeadDim];
  __shared__ float shared_max[kWarps][kMaxGroup], shared_sum[kWarps][kMaxGroup];
  const int64_t t = blockIdx.x;
  const int chunks_per_kv = (num_heads / layout.num_kv_heads + kMaxGroup - 1) / kMaxGroup;
  const int kv_head = blockIdx.y / chunks_per_kv;
  const int group = num_heads / layout.num_kv_heads;
  const int first_head = kv_head * group + (blockIdx.y % chunks_per_kv) * kMaxGroup;
  const int heads_here = min(kMaxGroup, kv_head * group + group - first_head);
  const int split = blockIdx.z, hd = layout.head_dim;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
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
  if (begin + warp < end) load_kv(begin + warp, k, v);
  for (int p = begin + warp; p < end; p += kWarps) {
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
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) shared_acc[warp][g][lane + 32 * i] = acc[g][i];
    if (lane == 0) {
      shared_max[warp][g] = run_max[g];
      shared_sum[warp][g] = run_sum[g];
    }
  }
  __syncthreads();
  // Merge the warps: m = max_w m_w; sum = sum_w s_w e^(m_w - m); acc = sum_w acc_w e^(m_w - m).
  for (int item = threadIdx.x; item < heads_here * hd; item += blockDim.x) {
    const int g = item / hd, d = item % hd;
    float merged_max = -INFINITY;
    for (int w = 0; w < kWarps; ++w) merged_max = fmaxf(merged_max, shared_max[w][g]);
    float merged_sum = 0.0f, merged_acc = 0.0f;
    if (merged_max != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float factor = expf(shared_max[w][g] - merged_max);
        merged_sum += shared_sum[w][g] * factor;
        merged_acc += shared_acc[w][g][d] * factor;
      }
    }
    const int64_t part = (t * num_heads + first_head + g) * splits + split;  // [T, H, splits]
    float* part_acc = workspace;
    float* part_stats = workspace + gridDim.x * static_cast<int64_t>(num_heads) * splits * hd;
    part_acc[part * hd + d] = merged_acc;
    if (d == 0) {
      part_stats[2 * part] = merged_max;
      part_stats[2 * part + 1] = merged_sum;
    }
  }
}

// One block per (token, head): attended = sum_s acc_s e^(m_s - m) / sum_s l_s e^(m_s - m), then the output gate.
// Every split's partial is loaded (from clamped indices, into registers) before any is used, so the
// combine waits for one memory round trip, not one per split.
__global__ void attention_combine_kernel(const float* workspace, int64_t num_tokens, int num_heads, int head_dim,
                                         int splits, AttentionOutput out) {
  begin_dependent_kernel();
  const int64_t th = blockIdx.x;
  const float* part_acc = workspace;
  const float* part_stats = workspace + num_tokens * num_heads * splits * head_dim;
  const int64_t t = th / num_heads, h = th % num_heads;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    const float gate = out.gate ? out.gate[t * out.gate_stride + h * out.gate_head_stride + d] : 0.0f;
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
    float sum = 0.0f, acc = 0.0f;
#pragma unroll
    for (int s = 0; s < kAttentionMaxSplits; ++s) {
      if (s >= splits || max_s[s] == -INFINITY) continue;
      const float factor = expf(max_s[s] - merged_max);
      sum += sum_s[s] * factor;
      acc += acc_s[s] * factor;
    }
    float value = acc / sum;
    if (out.gate) value *= sigmoidf_exact(gate);
    static_cast<__nv_bfloat16*>(out.out)[t * out.out_stride + h * head_dim + d] = __float2bfloat16(value);
  }
}
}  // namespace

cudaError_t launch_attention_decode(const float* query, const int32_t* slots, const int32_t* positions,
                                    int64_t num_tokens, int num_heads, const int32_t* block_tables,
                                    const PagedKvLayout& layout, const void* key_cache, const void* value_cache,
                                    int splits, float* workspace, const AttentionOutput& out, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (layout.head_dim > kAttentionMaxHeadDim || num_heads % layout.num_kv_heads != 0 || splits < 1 ||
      splits > kAttentionMaxSplits) {
    return cudaErrorInvalidValue;
  }
  const int chunks_per_kv = (num_heads / layout.num_kv_heads + kMaxGroup - 1) / kMaxGroup;
  const dim3 grid(static_cast<unsigned>(num_tokens), static_cast<unsigned>(layout.num_kv_heads * chunks_per_kv),
                  static_cast<unsigned>(splits));
  const cudaError_t status = launch_dependent(
      attention_partial_kernel, grid, kWarps * 32, 0, stream, query, slots, positions, num_heads, block_tables, layout,
      static_cast<const __nv_bfloat16*>(key_cache), static_cast<const __nv_bfloat16*>(value_cache), splits, workspace);
  if (status != cudaSuccess) return status;
  return launch_dependent(attention_combine_kernel, static_cast<unsigned>(num_tokens * num_heads), 128, 0, stream,
                          workspace, num_tokens, num_heads, layout.head_dim, splits, out);
}

}  // namespace uberlm::cuda
