#pragma once
// The fused attention input preparation (after CpuDecoder::full_attention): split query and gate out of
// q_proj, q/k RMS norm per head, partial NeoX RoPE at each token's position, and the key and value appended
// to the paged KV cache (one launch: each is a latency step of the decode).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/kv_cache.h"

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

// Where launch_qk_norm_rope_kv_append stores each token's prepared key and its value: position positions[t] of slot
// slots[t] in a layer's paged bf16 pools (the caller has assigned a block to every position written).
struct KvCacheWrite {
  const float* v;  // fp32 [T, KV * head_dim]
  const int32_t* slots;
  const int32_t* block_tables;
  PagedKvLayout layout;
  void* key_cache;
  void* value_cache;
};

// q_proj: fp32 [T, H * head_dim * (gated ? 2 : 1)]; k: fp32 [T, KV * head_dim], normalised and rotated in
// place and then appended to the cache with v; positions: [T]; inv_freq: fp32 [rotary_dim / 2]; q_norm,
// k_norm: fp32 [head_dim] when qk_norm; query: fp32 [T, H * head_dim], the normalised, rotated query.
cudaError_t launch_qk_norm_rope_kv_append(const float* q_proj, float* k, const int32_t* positions, int64_t num_tokens,
                                const AttentionPrepShape& shape, const float* inv_freq, const float* q_norm,
                                const float* k_norm, float* query, const KvCacheWrite& cache, cudaStream_t stream);

}  // namespace uberlm::cuda
