#pragma once
// Causal grouped-query attention of one token over a sequence's cached keys and values, fp32.
#include <cstdint>

namespace uberlm::cpu {

struct AttentionShape {
  int num_heads;
  int num_kv_heads;
  int head_dim;
};

// q: [num_heads, head_dim] of the token at position `position`; keys/values: [>= position+1,
// num_kv_heads, head_dim]; out: [num_heads, head_dim]. Query head h reads kv head h / (H / KV);
// softmax(q·k / sqrt(head_dim)) over positions 0..position.
void attend_one_token(const float* q, const float* keys, const float* values, int64_t position,
                      const AttentionShape& shape, float* out);

}  // namespace uberlm::cpu
