#pragma once
// Gated DeltaNet (linear attention) kernels, fp32: the recurrent rule for one token, which the decoder
// runs (token by token, so a prompt's split into chunks cannot change its numbers), and the chunked
// form of the fast prefill kernels, the reference the GPU's chunked kernel is checked against.
#include <cstdint>

namespace uberlm::cpu {

struct GatedDeltaNetShape {
  int num_k_heads;
  int num_v_heads;
  int k_head_dim;
  int v_head_dim;
  int conv_kernel;
  int64_t key_dim() const { return static_cast<int64_t>(num_k_heads) * k_head_dim; }
  int64_t value_dim() const { return static_cast<int64_t>(num_v_heads) * v_head_dim; }
  int64_t conv_dim() const { return 2 * key_dim() + value_dim(); }
};

// Causal depthwise conv then SiLU for one new column.
// input: [channels] pre-activation; conv_state: [channels, kernel-1], the previous inputs oldest
// first, shifted in place; weight: [channels, kernel], weight[:, kernel-1] multiplies `input`.
// out[ch] = silu(sum_j weight[ch, j] * column_j[ch]).
void causal_conv1d_step(const float* input, float* conv_state, const float* weight, int64_t channels, int kernel,
                        float* out);

// The gated delta rule for one token.
// mixed: [conv_dim] conv output, q | k | v head-major (q, k: [num_k_heads, k_head_dim], v: [num_v_heads,
// v_head_dim]); modified in place (q, k normalised). a, b: [num_v_heads] projections;
// a_log, dt_bias: [num_v_heads]; state: [num_v_heads, k_head_dim, v_head_dim]; out: [num_v_heads, v_head_dim].
void gated_delta_rule_step(float* mixed, const float* a, const float* b, const float* a_log, const float* dt_bias,
                           const GatedDeltaNetShape& shape, float* state, float* out);

// The gated delta rule for `tokens` consecutive tokens of one sequence, in chunks of `chunk` tokens:
// the WY / UT-transform form (within a chunk, the updates solve one unit lower-triangular system and
// the state is read and written once per chunk). Same arguments as gated_delta_rule_step with a token
// axis in front: mixed [tokens, conv_dim], a, b [tokens, num_v_heads], out [tokens, num_v_heads,
// v_head_dim]. Equals the step form token by token up to fp32 rounding (tests/gated_delta_net_test.cpp).
void gated_delta_rule_chunked(float* mixed, const float* a, const float* b, const float* a_log, const float* dt_bias,
                              const GatedDeltaNetShape& shape, int64_t tokens, int chunk, float* state, float* out);

}  // namespace uberlm::cpu
