#pragma once
// Causal GQA attention of a step's prompt chunks over the paged KV cache, flash-attention style on tensor
// cores: one block per (64-query tile of one chunk, query head), keys and values staged in shared memory
// 32 positions at a time, S = Q K^T and O += P V on mma.sync (bf16 in, fp32 accumulate), an online
// softmax in registers, the output gate applied as the tile is written. A chunk may continue a cached
// prefix (its start > 0): its queries attend every cached position up to their own.
#include <cuda_runtime_api.h>

#include <cstdint>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/device_chunks.h"
#include "ops/cuda/kv_cache.h"

namespace uberlm::cuda {

// Head dims the kernel is compiled for (64, 128, 256).
bool attention_prefill_supports(int head_dim);

// query: fp32 [num_tokens, H, head_dim]; the chunks cover the num_tokens tokens. Same output and
// attention as launch_attention_decode over those tokens; the grid depends only on num_tokens and the
// chunk count, so a captured graph replays for any split of the same shape. Queries and the softmax
// weights are rounded to bf16 for the tensor cores (as transformers' bf16 attention does).
cudaError_t launch_attention_prefill(const float* query, int64_t num_tokens, const DeviceChunks& chunks,
                                     int num_heads, const int32_t* block_tables, const PagedKvLayout& layout,
                                     const void* key_cache, const void* value_cache, const AttentionOutput& out,
                                     cudaStream_t stream);

}  // namespace uberlm::cuda
