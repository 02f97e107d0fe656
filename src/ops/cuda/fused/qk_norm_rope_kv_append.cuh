#pragma once
// Device parts of the attention input preparation, callable from fused kernels.
#include "ops/cuda/attention_decode.h"
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

}  // namespace uberlm::cuda
