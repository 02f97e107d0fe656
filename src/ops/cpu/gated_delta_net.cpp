#include "ops/cpu/gated_delta_net.h"

#include <cmath>
#include <vector>

#include "ops/cpu/activation.h"
#include "ops/cpu/norm.h"

namespace uberlm::cpu {

void causal_conv1d_step(const float* input, float* conv_state, const float* weight, int64_t channels, int kernel,
                        float* out) {
  const int history = kernel - 1;
  for (int64_t ch = 0; ch < channels; ++ch) {
    float* past = conv_state + ch * history;
    const float* w = weight + ch * kernel;
    float sum = 0.0f;
    for (int j = 0; j < history; ++j) sum += w[j] * past[j];
    sum += w[history] * input[ch];
    for (int j = 0; j + 1 < history; ++j) past[j] = past[j + 1];
    if (history > 0) past[history - 1] = input[ch];
    out[ch] = silu(sum);
  }
}

void gated_delta_rule_step(float* mixed, const float* a, const float* b, const float* a_log, const float* dt_bias,
                           const GatedDeltaNetShape& shape, float* state, float* out) {
  const int dk = shape.k_head_dim, dv = shape.v_head_dim;
  float* q = mixed;
  float* k = mixed + shape.key_dim();
  const float* v = mixed + 2 * shape.key_dim();
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (int h = 0; h < shape.num_k_heads; ++h) {
    l2_normalize(q + h * dk, dk, 1e-6f);  // q = l2norm(q) / sqrt(dk)
    for (int i = 0; i < dk; ++i) q[h * dk + i] *= q_scale;
    l2_normalize(k + h * dk, dk, 1e-6f);
  }
  const int heads_per_key = shape.num_v_heads / shape.num_k_heads;
  std::vector<float> kv_memory(dv);
  for (int h = 0; h < shape.num_v_heads; ++h) {
    const float* q_head = q + (h / heads_per_key) * dk;
    const float* k_head = k + (h / heads_per_key) * dk;
    const float* v_head = v + static_cast<int64_t>(h) * dv;
    float* s = state + static_cast<int64_t>(h) * dk * dv;  // S[i, j]: key i, value j
    const float beta = sigmoid(b[h]);
    const float g = -std::exp(a_log[h]) * softplus(a[h] + dt_bias[h]);
    const float decay = std::exp(g);
    for (int64_t i = 0; i < static_cast<int64_t>(dk) * dv; ++i) s[i] *= decay;  // S = exp(g) S
    std::fill(kv_memory.begin(), kv_memory.end(), 0.0f);
    for (int i = 0; i < dk; ++i) {
      for (int j = 0; j < dv; ++j) kv_memory[j] += s[i * dv + j] * k_head[i];  // S^T k
    }
    for (int j = 0; j < dv; ++j) kv_memory[j] = (v_head[j] - kv_memory[j]) * beta;  // delta
    float* o = out + static_cast<int64_t>(h) * dv;
    std::fill(o, o + dv, 0.0f);
    for (int i = 0; i < dk; ++i) {
      for (int j = 0; j < dv; ++j) {
        s[i * dv + j] += k_head[i] * kv_memory[j];  // S += k delta^T
        o[j] += s[i * dv + j] * q_head[i];          // o = S^T q
      }
    }
  }
}

}  // namespace uberlm::cpu
