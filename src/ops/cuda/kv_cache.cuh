#pragma once
// Addressing of the paged KV cache, shared by the append and attention kernels.
#include <cstdint>

#include "ops/cuda/kv_cache.h"

namespace uberlm::cuda {

// Element offset of (slot, position, kv_head, 0) in a layer's key or value pool.
__device__ __forceinline__ int64_t kv_offset(const int32_t* block_tables, const PagedKvLayout& layout, int slot,
                                             int position, int kv_head) {
  const int block = block_tables[static_cast<int64_t>(slot) * layout.max_blocks_per_slot + position / layout.block_size];
  const int64_t row = static_cast<int64_t>(block) * layout.block_size + position % layout.block_size;
  return (row * layout.num_kv_heads + kv_head) * layout.head_dim;
}

}  // namespace uberlm::cuda
