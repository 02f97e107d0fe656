#include "ops/cuda/attention_decode.cuh"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
// Grid (token, kv head x head chunk, split), kAttentionPartialWarps warps: attention_partial_block.
__global__ void __launch_bounds__(kAttentionPartialWarps * 32) attention_partial_kernel(
    const float* query, const int32_t* slots, const int32_t* positions, int num_heads, const int32_t* block_tables,
    PagedKvLayout layout, const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache, int splits,
    float* workspace) {
  begin_dependent_kernel();
  __shared__ AttentionPartialShared<> shared;
  attention_partial_block(query, slots, positions, num_heads, block_tables, layout, key_cache, value_cache, splits,
                          workspace, gridDim.x, blockIdx.x, blockIdx.y, blockIdx.z, shared);
}

// One block per (token, head): attention_combine_row.
__global__ void attention_combine_kernel(const float* workspace, int64_t num_tokens, int num_heads, int head_dim,
                                         int splits, AttentionOutput out) {
  begin_dependent_kernel();
  attention_combine_row(workspace, num_tokens, num_heads, head_dim, splits, out, blockIdx.x);
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
  const int chunks_per_kv = attention_head_chunks(num_heads, layout.num_kv_heads);
  const dim3 grid(static_cast<unsigned>(num_tokens), static_cast<unsigned>(layout.num_kv_heads * chunks_per_kv),
                  static_cast<unsigned>(splits));
  const cudaError_t status = launch_dependent(
      attention_partial_kernel, grid, kAttentionPartialWarps * 32, 0, stream, query, slots, positions, num_heads, block_tables, layout,
      static_cast<const __nv_bfloat16*>(key_cache), static_cast<const __nv_bfloat16*>(value_cache), splits, workspace);
  if (status != cudaSuccess) return status;
  return launch_dependent(attention_combine_kernel, static_cast<unsigned>(num_tokens * num_heads), 128, 0, stream,
                          workspace, num_tokens, num_heads, layout.head_dim, splits, out);
}

}  // namespace uberlm::cuda
