#pragma once
// Causal GQA attention of a step's prompt chunks over the paged KV cache, flash-attention style on tensor
// cores: one block per (64-query tile of one chunk, query head), keys and values staged in shared memory
// 32 positions at a time, S = Q K^T and O += P V on mma.sync or wgmma (bf16 in, fp32 accumulate), an online
// softmax in registers, the output gate applied as the tile is written. A chunk may continue a cached
// prefix (its start > 0): its queries attend every cached position up to their own.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/device_chunks.h"
#include "ops/cuda/kv_cache.h"

namespace uberlm::cuda {

// The two kernels: mma.sync (sm_80 and later; head dims 64, 128, 256) and Hopper's warpgroup MMA (sm_90a, built
// into this binary's sm_90a code only; head dims 128 and 256). Same tiles and the same math; they differ in the
// order of the fp32 sums inside the tensor cores.
enum class PrefillAttentionKernel { MmaSync, Wgmma };
const char* prefill_attention_kernel_name(PrefillAttentionKernel kernel);

// Whether the mma.sync kernel is compiled for head_dim (64, 128, 256).
bool attention_prefill_supports(int head_dim);
// Whether `kernel` runs `head_dim` on the current device.
bool prefill_attention_kernel_runs(PrefillAttentionKernel kernel, int head_dim);
// What prompt steps take on the current device: wgmma where it runs, else mma.sync (head_dim supported).
PrefillAttentionKernel prefill_attention_kernel_for(int head_dim);

// query: fp32 [num_tokens, H, head_dim]; the chunks cover the num_tokens tokens. Same output and
// attention as launch_attention_decode over those tokens; the grid depends only on num_tokens and the
// chunk count, so a captured graph replays for any split of the same shape. Queries and the softmax
// weights are rounded to bf16 for the tensor cores (as transformers' bf16 attention does). `kernel` must
// run head_dim here (prefill_attention_kernel_runs).
cudaError_t launch_attention_prefill(PrefillAttentionKernel kernel, const float* query, int64_t num_tokens,
                                     const DeviceChunks& chunks, int num_heads, const int32_t* block_tables,
                                     const PagedKvLayout& layout, const void* key_cache, const void* value_cache,
                                     const AttentionOutput& out, cudaStream_t stream);

}  // namespace uberlm::cuda
