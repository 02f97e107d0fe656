#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/kv_cache.cuh"

namespace uberlm::cuda {

namespace {
// One block per (token, kv head); threads over head_dim.
__global__ void kv_cache_append_kernel(const float* k, const float* v, const int32_t* slots, const int32_t* positions,
                                       const int32_t* block_tables, PagedKvLayout layout, __nv_bfloat16* key_cache,
                                       __nv_bfloat16* value_cache) {
  begin_dependent_kernel();
  const int64_t t = blockIdx.x;
  const int head = blockIdx.y;
  const int64_t dst = kv_offset(block_tables, layout, slots[t], positions[t], head);
  const int64_t src = (t * layout.num_kv_heads + head) * layout.head_dim;
  for (int d = threadIdx.x; d < layout.head_dim; d += blockDim.x) {
    key_cache[dst + d] = __float2bfloat16(k[src + d]);
    value_cache[dst + d] = __float2bfloat16(v[src + d]);
  }
}
}  // namespace

cudaError_t launch_kv_cache_append(const float* k, const float* v, const int32_t* slots, const int32_t* positions,
                                   int64_t num_tokens, const int32_t* block_tables, const PagedKvLayout& layout,
                                   void* key_cache, void* value_cache, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(num_tokens), static_cast<unsigned>(layout.num_kv_heads));
  return launch_dependent(kv_cache_append_kernel, grid, 64, 0, stream, k, v, slots, positions, block_tables, layout,
                          static_cast<__nv_bfloat16*>(key_cache), static_cast<__nv_bfloat16*>(value_cache));
}

}  // namespace uberlm::cuda
