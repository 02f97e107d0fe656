#pragma once
// Paged KV cache on the GPU: each sequence slot owns a list of fixed-size blocks (its block table row);
// a layer's keys and values live in bf16 pools [num_blocks, block_size, num_kv_heads, head_dim]. Tokens are
// appended by launch_qk_norm_rope_kv_append (fused/qk_norm_rope_kv_append.h) and read by launch_attention_decode.
#include <cuda_runtime_api.h>

#include <cstdint>

namespace uberlm::cuda {

struct PagedKvLayout {
  int block_size;           // tokens per block
  int max_blocks_per_slot;  // columns of the block table
  int num_kv_heads;
  int head_dim;
};

}  // namespace uberlm::cuda
