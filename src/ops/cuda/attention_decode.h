#pragma once
// Causal GQA attention of each token over its sequence's paged KV cache (flash-decoding): the positions
// are split into `splits` ranges whose partial softmax sums are combined in a second pass, so a single
// long sequence still fills the GPU. Works for any token of a prompt too (each attends positions
// 0..its own), which is how prefill runs until attention_prefill has a query-tiled kernel.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "ops/cuda/kv_cache.h"

namespace uberlm::cuda {

inline constexpr int kAttentionMaxHeadDim = 256;
inline constexpr int kAttentionMaxSplits = 32;

// Split count for `num_tokens` queries: enough blocks to fill the GPU at small batches, never more
// ranges than max_context / 64 positions. A function of the batch shape only, so that graph replays
// and eager runs of one batch size compute in the same order.
inline int attention_splits(int64_t num_tokens, int num_kv_heads, int64_t max_context) {
  constexpr int64_t kTargetBlocks = 512, kMinPositionsPerSplit = 64;
  const int64_t by_fill = (kTargetBlocks + num_tokens * num_kv_heads - 1) / (num_tokens * num_kv_heads);
  const int64_t by_length = (max_context + kMinPositionsPerSplit - 1) / kMinPositionsPerSplit;
  return static_cast<int>(std::clamp<int64_t>(std::min(by_fill, by_length), 1, kAttentionMaxSplits));
}

// fp32 workspace of one launch: partial outputs and their softmax max and sum per split.
inline int64_t attention_workspace_floats(int64_t num_tokens, int num_heads, int head_dim, int splits) {
  return num_tokens * num_heads * splits * (head_dim + 2);
}

// Where the attention output goes: out[t, h * head_dim + d] = bf16(attended * sigmoid(gate[t * gate_stride +
// h * gate_head_stride + d])), or bf16(attended) when gate is null (Qwen3.5's output gate, applied while
// the splits are combined instead of in a launch of its own).
struct AttentionOutput {
  const float* gate;
  int64_t gate_stride;
  int64_t gate_head_stride;
  void* out;  // bf16 [T, out_stride]
  int64_t out_stride;
};

// query: fp32 [T, H, head_dim]; token t of slot slots[t] at position positions[t] attends cached
// positions 0..positions[t]: attended[t, h] = softmax(q·k / sqrt(head_dim)) · v with kv head h / (H / KV).
cudaError_t launch_attention_decode(const float* query, const int32_t* slots, const int32_t* positions,
                                    int64_t num_tokens, int num_heads, const int32_t* block_tables,
                                    const PagedKvLayout& layout, const void* key_cache, const void* value_cache,
                                    int splits, float* workspace, const AttentionOutput& out, cudaStream_t stream);

}  // namespace uberlm::cuda
