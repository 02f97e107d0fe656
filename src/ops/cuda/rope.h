#pragma once
// Attention input preparation on the GPU (after CpuDecoder::full_attention): split query and gate out of
// q_proj, q/k RMS norm per head, partial NeoX RoPE at each token's position.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

struct AttentionPrepShape {
  int num_heads;
  int num_kv_heads;
  int head_dim;   // at most 256
  int rotary_dim; // the first rotary_dim dims of each head rotate, dim j with j + rotary_dim / 2
  bool gated;     // q_proj rows per head: query then gate (2 * head_dim), else query only
  bool qk_norm;
  float norm_offset;  // 0 (w) or 1 (1 + w)
  float eps;
};

// q_proj: fp32 [T, H * head_dim * (gated ? 2 : 1)]; k: fp32 [T, KV * head_dim], normalised and rotated in
// place; positions: [T]; inv_freq: fp32 [rotary_dim / 2]; q_norm, k_norm: fp32 [head_dim] when qk_norm;
// query: fp32 [T, H * head_dim], the normalised, rotated query.
cudaError_t launch_qk_norm_rope(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                const AttentionPrepShape& shape, const float* inv_freq, const float* q_norm,
                                const float* k_norm, float* query, cudaStream_t stream);

}  // namespace uberlm::cuda
