#pragma once
// Paged KV cache on the GPU: each sequence slot owns a list of fixed-size blocks (its block table row);
// a layer's keys and values live in bf16 pools [num_blocks, block_size, num_kv_heads, head_dim].
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

struct PagedKvLayout {
  int block_size;           // tokens per block
  int max_blocks_per_slot;  // columns of the block table
  int num_kv_heads;
  int head_dim;
};

// k, v: fp32 [T, KV * head_dim]; token t is written at position positions[t] of slot slots[t], through
// block_tables [slots, max_blocks_per_slot] (the caller has assigned a block to every position written).
cudaError_t launch_kv_cache_append(const float* k, const float* v, const int32_t* slots, const int32_t* positions,
                                   int64_t num_tokens, const int32_t* block_tables, const PagedKvLayout& layout,
                                   void* key_cache, void* value_cache, cudaStream_t stream);

}  // namespace uberlm::cuda
