#include "ops/cpu/gated_delta_net.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/activation.h"
#include "ops/cpu/linear.h"
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

namespace {

// q = l2norm(q) / sqrt(dk), k = l2norm(k), in place, for one token's conv output.
void normalize_query_key(float* mixed, const GatedDeltaNetShape& shape) {
  const int dk = shape.k_head_dim;
  float* q = mixed;
  float* k = mixed + shape.key_dim();
  const float q_scale = 1.0f / std::sqrt(static_cast<float>(dk));
  for (int h = 0; h < shape.num_k_heads; ++h) {
    l2_normalize(q + h * dk, dk, 1e-6f);
    for (int i = 0; i < dk; ++i) q[h * dk + i] *= q_scale;
    l2_normalize(k + h * dk, dk, 1e-6f);
  }
}

float write_strength(const float* b, int h) { return sigmoid(b[h]); }  // beta

float log_decay(const float* a, const float* a_log, const float* dt_bias, int h) {  // g
  return -std::exp(a_log[h]) * softplus(a[h] + dt_bias[h]);
}

// One value head over one chunk of c tokens. q, k: [c, dk] rows (normalised), v: [c, dv], beta, g: [c];
// s: [dk, dv] the state before the chunk, updated; o: [c, dv].
struct ChunkRows {
  std::vector<const float*> q, k, v;
  std::vector<float> beta, g;
  std::vector<float*> o;
};

void delta_rule_chunk(const ChunkRows& rows, int dk, int dv, float* s) {
  const int c = static_cast<int>(rows.q.size());
  std::vector<float> cum(c);  // G_i = g_1 + ... + g_i
  for (int i = 0; i < c; ++i) cum[i] = rows.g[i] + (i > 0 ? cum[i - 1] : 0.0f);
  // Delta rows d_i = beta_i (v_i - k_i^T S_{i-1}), with S_{i-1} the decayed state before token i, solve
  //   d_i + sum_{j<i} beta_i exp(G_i - G_j) (k_i . k_j) d_j = beta_i (v_i - exp(G_i) S^T k_i),
  // a unit lower-triangular system in the chunk's tokens: forward substitution, row by row.
  std::vector<float> delta(static_cast<size_t>(c) * dv);
  for (int i = 0; i < c; ++i) {
    float* d = delta.data() + static_cast<size_t>(i) * dv;
    const float decay_i = std::exp(cum[i]);
    for (int j = 0; j < dv; ++j) {
      float sk = 0.0f;
      for (int r = 0; r < dk; ++r) sk += s[r * dv + j] * rows.k[i][r];
      d[j] = rows.beta[i] * (rows.v[i][j] - decay_i * sk);
    }
    for (int p = 0; p < i; ++p) {
      const float coupling = rows.beta[i] * std::exp(cum[i] - cum[p]) * dot(rows.k[i], rows.k[p], dk);
      const float* dp = delta.data() + static_cast<size_t>(p) * dv;
      for (int j = 0; j < dv; ++j) d[j] -= coupling * dp[j];
    }
  }
  // o_i = exp(G_i) S^T q_i + sum_{p<=i} exp(G_i - G_p) (q_i . k_p) d_p.
  for (int i = 0; i < c; ++i) {
    float* o = rows.o[i];
    const float decay_i = std::exp(cum[i]);
    for (int j = 0; j < dv; ++j) {
      float sq = 0.0f;
      for (int r = 0; r < dk; ++r) sq += s[r * dv + j] * rows.q[i][r];
      o[j] = decay_i * sq;
    }
    for (int p = 0; p <= i; ++p) {
      const float weight = std::exp(cum[i] - cum[p]) * dot(rows.q[i], rows.k[p], dk);
      const float* dp = delta.data() + static_cast<size_t>(p) * dv;
      for (int j = 0; j < dv; ++j) o[j] += weight * dp[j];
    }
  }
  // S <- exp(G_c) S + sum_p exp(G_c - G_p) k_p d_p^T.
  const float chunk_decay = std::exp(cum[c - 1]);
  for (int64_t e = 0; e < static_cast<int64_t>(dk) * dv; ++e) s[e] *= chunk_decay;
  for (int p = 0; p < c; ++p) {
    const float weight = std::exp(cum[c - 1] - cum[p]);
    const float* dp = delta.data() + static_cast<size_t>(p) * dv;
    for (int r = 0; r < dk; ++r) {
      const float kr = weight * rows.k[p][r];
      for (int j = 0; j < dv; ++j) s[r * dv + j] += kr * dp[j];
    }
  }
}

}  // namespace

void gated_delta_rule_step(float* mixed, const float* a, const float* b, const float* a_log, const float* dt_bias,
                           const GatedDeltaNetShape& shape, float* state, float* out) {
  const int dk = shape.k_head_dim, dv = shape.v_head_dim;
  normalize_query_key(mixed, shape);
  const float* q = mixed;
  const float* k = mixed + shape.key_dim();
  const float* v = mixed + 2 * shape.key_dim();
  const int heads_per_key = shape.num_v_heads / shape.num_k_heads;
  std::vector<float> kv_memory(dv);
  for (int h = 0; h < shape.num_v_heads; ++h) {
    const float* q_head = q + (h / heads_per_key) * dk;
    const float* k_head = k + (h / heads_per_key) * dk;
    const float* v_head = v + static_cast<int64_t>(h) * dv;
    float* s = state + static_cast<int64_t>(h) * dk * dv;  // S[i, j]: key i, value j
    const float beta = write_strength(b, h);
    const float decay = std::exp(log_decay(a, a_log, dt_bias, h));
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

void gated_delta_rule_chunked(float* mixed, const float* a, const float* b, const float* a_log, const float* dt_bias,
                              const GatedDeltaNetShape& shape, int64_t tokens, int chunk, float* state, float* out) {
  const int dk = shape.k_head_dim, dv = shape.v_head_dim, hv = shape.num_v_heads;
  const int64_t conv_dim = shape.conv_dim();
  for (int64_t t = 0; t < tokens; ++t) normalize_query_key(mixed + t * conv_dim, shape);
  const int heads_per_key = hv / shape.num_k_heads;
  for (int h = 0; h < hv; ++h) {
    const int64_t key_offset = static_cast<int64_t>(h / heads_per_key) * dk;
    float* s = state + static_cast<int64_t>(h) * dk * dv;
    for (int64_t start = 0; start < tokens; start += chunk) {
      ChunkRows rows;
      for (int64_t t = start; t < std::min(tokens, start + chunk); ++t) {
        const float* token = mixed + t * conv_dim;
        rows.q.push_back(token + key_offset);
        rows.k.push_back(token + shape.key_dim() + key_offset);
        rows.v.push_back(token + 2 * shape.key_dim() + static_cast<int64_t>(h) * dv);
        rows.beta.push_back(write_strength(b + t * hv, h));
        rows.g.push_back(log_decay(a + t * hv, a_log, dt_bias, h));
        rows.o.push_back(out + (t * hv + h) * dv);
      }
      delta_rule_chunk(rows, dk, dv, s);
    }
  }
}

}  // namespace uberlm::cpu
