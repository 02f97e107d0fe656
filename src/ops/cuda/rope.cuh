#pragma once
// Device parts of the attention input preparation, callable from fused kernels.
#include "ops/cuda/rms_norm.cuh"

namespace uberlm::cuda {

// One warp: head = src (optionally RMS-normed with weight (offset + w)) written to dst, then dst's first
// rotary_dim dims rotated at `position`: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin). src may equal dst.
__device__ __forceinline__ void warp_norm_rope_head(const float* src, float* dst, int head_dim, const float* norm,
                                                    float norm_offset, float eps, int rotary_dim,
                                                    const float* inv_freq, int position) {
  const int lane = threadIdx.x % 32;
  const float scale = norm ? warp_inverse_rms(src, head_dim, eps) : 1.0f;
  for (int i = lane; i < head_dim; i += 32) dst[i] = norm ? src[i] * scale * (norm_offset + norm[i]) : src[i];
  __syncwarp();
  const int half = rotary_dim / 2;
  for (int j = lane; j < half; j += 32) {
    const float angle = static_cast<float>(position) * inv_freq[j];
    const float c = cosf(angle), s = sinf(angle);
    const float x1 = dst[j], x2 = dst[j + half];
    dst[j] = x1 * c - x2 * s;
    dst[j + half] = x2 * c + x1 * s;
  }
  __syncwarp();
}

}  // namespace uberlm::cuda
