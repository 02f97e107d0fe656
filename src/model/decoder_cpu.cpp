#include "model/decoder_cpu.h"

#include <cstring>

#include "core/error.h"
#include "core/thread_pool.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/attention.h"
#include "ops/cpu/linear.h"
#include "ops/cpu/linear_nvfp4.h"
#include "ops/cpu/norm.h"

namespace uberlm {

namespace {
std::vector<float> f32_or_empty(const TensorView& tensor) {
  return tensor.data ? to_f32(tensor) : std::vector<float>();
}

// y: [T, out] = x: [T, in] · W^T (+ bias), W dense or NVFP4.
void linear(const LinearWeight& layer, const float* x, int64_t num_tokens, float* y) {
  if (!layer.nvfp4) {
    cpu::linear(x, num_tokens, layer.weight, layer.bias, y);
    return;
  }
  cpu::linear_nvfp4(x, num_tokens, *layer.nvfp4, y);
  if (!layer.bias.data) return;
  const std::vector<float> bias = to_f32(layer.bias);
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (size_t n = 0; n < bias.size(); ++n) y[t * bias.size() + n] += bias[n];
  }
}

void project(const LinearWeight& layer, const float* x, int64_t num_tokens, std::vector<float>& y) {
  y.resize(num_tokens * layer.out_features());
  linear(layer, x, num_tokens, y.data());
}
}  // namespace

CpuDecoder::CpuDecoder(const ModelConfig& config, const ModelWeights& weights, HostCollectives* collectives)
    : config_(config),
      weights_(weights),
      collectives_(collectives),
      rope_(config.rotary_dim, config.rope_theta),
      delta_net_shape_{config.delta_net_num_key_heads, config.delta_net_num_value_heads, config.delta_net_key_head_dim,
                   config.delta_net_value_head_dim, config.delta_net_conv_kernel} {
  for (const LayerWeights& layer : weights.layers) {
    LayerParams p;
    p.input_norm = to_f32(layer.input_norm);
    p.post_attention_norm = to_f32(layer.post_attention_norm);
    p.q_norm = f32_or_empty(layer.attention.q_norm);
    p.k_norm = f32_or_empty(layer.attention.k_norm);
    p.conv1d = f32_or_empty(layer.delta_net.conv1d);
    p.dt_bias = f32_or_empty(layer.delta_net.dt_bias);
    p.a_log = f32_or_empty(layer.delta_net.a_log);
    p.delta_norm = f32_or_empty(layer.delta_net.norm);
    params_.push_back(std::move(p));
  }
  final_norm_ = to_f32(weights.final_norm);
}

CpuSequenceCache CpuDecoder::new_cache() const {
  CpuSequenceCache cache;
  cache.keys.resize(config_.num_layers);
  cache.values.resize(config_.num_layers);
  cache.conv.resize(config_.num_layers);
  cache.recurrent.resize(config_.num_layers);
  for (int i = 0; i < config_.num_layers; ++i) {
    if (config_.layer_kinds[i] != LayerKind::GatedDeltaNet) continue;
    cache.conv[i].assign(delta_net_shape_.conv_dim() * (delta_net_shape_.conv_kernel - 1), 0.0f);
    cache.recurrent[i].assign(
        static_cast<int64_t>(delta_net_shape_.num_v_heads) * delta_net_shape_.k_head_dim * delta_net_shape_.v_head_dim, 0.0f);
  }
  return cache;
}

std::vector<CpuDecoder::TokenSpan> CpuDecoder::spans_of(const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches,
                                                        std::vector<CpuSequenceCache>* prefixes) const {
  std::vector<TokenSpan> spans;
  int64_t offset = 0;
  for (const SequenceChunk& chunk : batch.chunks) {
    if (chunk.slot < 0 || chunk.slot >= static_cast<int>(caches.size())) fail("forward: invalid slot {}", chunk.slot);
    CpuSequenceCache& cache = caches[chunk.slot];
    if (chunk.start != cache.length) {
      fail("forward: slot {}'s run starts at position {}, its cache holds {} tokens", chunk.slot, chunk.start,
           cache.length);
    }
    TokenSpan& span = spans.emplace_back(TokenSpan{&cache, offset, chunk.num_tokens});
    if (prefixes && chunk.prefix_save_snapshot >= 0) {
      span.prefix = &prefixes->at(chunk.prefix_save_snapshot);
      *span.prefix = new_cache();
      span.prefix_after = chunk.prefix_save_after;
    }
    offset += chunk.num_tokens;
  }
  if (offset != static_cast<int64_t>(batch.tokens.size())) {
    fail("forward: chunks cover {} tokens, batch has {}", offset, batch.tokens.size());
  }
  return spans;
}

// A run at position 0 begins its slot afresh. Any other start must continue the cache where it ends: the
// Gated DeltaNet state keeps no history to rewind (spans_of checks).
void CpuDecoder::begin_runs(const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches) const {
  for (const SequenceChunk& chunk : batch.chunks) {
    if (chunk.start == 0 && chunk.slot >= 0 && chunk.slot < static_cast<int>(caches.size())) {
      caches[chunk.slot] = new_cache();
    }
  }
}

void CpuDecoder::all_reduce(float* out, int64_t num_tokens) const {
  if (collectives_) collectives_->all_reduce_sum(out, num_tokens * config_.hidden_size);
}

void CpuDecoder::mixer(int layer, const float* h, const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches,
                       float* out) const {
  mixer(layer, h, static_cast<int64_t>(batch.tokens.size()), spans_of(batch, caches, nullptr), out);
}

void CpuDecoder::mixer(int layer, const float* h, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                       float* out) const {
  if (config_.layer_kinds[layer] == LayerKind::FullAttention) {
    full_attention(layer, h, num_tokens, spans, out);
  } else {
    gated_delta_net(layer, h, num_tokens, spans, out);
  }
}

ForwardResult CpuDecoder::forward(const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches,
                                  std::vector<CpuSequenceCache>& prefixes, ForwardSnapshot* snapshot) const {
  const int64_t num_tokens = static_cast<int64_t>(batch.tokens.size());
  const int64_t dim = config_.hidden_size;
  begin_runs(batch, caches);
  std::vector<TokenSpan> spans = spans_of(batch, caches, &prefixes);

  // x: [T, D] = embed_tokens[tokens]; embeddings are not scaled.
  std::vector<float> x(num_tokens * dim);
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int32_t token = batch.tokens[t];
    if (token < 0 || token >= config_.vocab_size) fail("forward: token id {} outside the vocabulary", token);
    TensorView row{weights_.embed_tokens.dtype, {dim}, static_cast<const uint8_t*>(weights_.embed_tokens.data) +
                                                         token * dim * dtype_size(weights_.embed_tokens.dtype)};
    to_f32(row, x.data() + t * dim);
  }
  if (snapshot) snapshot->layers.assign(config_.num_layers, LayerSnapshot{});
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    run_layer(layer, x.data(), num_tokens, spans, snapshot ? &snapshot->layers[layer] : nullptr);
  }
  finish_prefix_saves(spans);
  for (TokenSpan& span : spans) span.cache->length += span.num_tokens;
  if (snapshot && !batch.chunks.empty()) snapshot_caches(batch.chunks.front(), *spans.front().cache, *snapshot);

  // Rows that produce logits (LogitRows): each chunk's last token, every token, or none.
  std::vector<int64_t> rows;
  for (size_t c = 0; c < batch.chunks.size(); ++c) {
    const int64_t end = spans[c].first_token + spans[c].num_tokens;
    for (int64_t t = end - batch.chunks[c].logit_rows(); t < end; ++t) rows.push_back(t);
  }
  std::vector<float> normed(rows.size() * dim);
  for (size_t r = 0; r < rows.size(); ++r) {
    cpu::rms_norm(x.data() + rows[r] * dim, 1, dim, final_norm_.data(), config_.norm_style, config_.rms_norm_eps,
                  normed.data() + r * dim);
  }
  ForwardResult result;
  result.rows = static_cast<int64_t>(rows.size());
  project(weights_.lm_head, normed.data(), result.rows, result.logits);
  if (!collectives_) return result;
  // Each rank's logits are its vocabulary slice [rows, shard_rows]; gather them all.
  const int64_t shard_rows = weights_.lm_head.out_features();
  std::vector<float> gathered(collectives_->size() * result.logits.size());
  collectives_->all_gather(result.logits.data(), static_cast<int64_t>(result.logits.size()), gathered.data());
  result.logits.resize(result.rows * config_.vocab_size);
  assemble_vocab_shards(gathered.data(), collectives_->size(), result.rows, shard_rows, config_.vocab_size,
                        result.logits.data());
  return result;
}

void CpuDecoder::finish_prefix_saves(const std::vector<TokenSpan>& spans) const {
  const int64_t kv_width = static_cast<int64_t>(config_.num_kv_heads) * config_.head_dim;
  for (const TokenSpan& span : spans) {
    if (!span.prefix) continue;
    span.prefix->length = span.cache->length + span.prefix_after;
    for (int layer = 0; layer < config_.num_layers; ++layer) {
      if (config_.layer_kinds[layer] != LayerKind::FullAttention) continue;
      const auto first_positions = [&](const std::vector<float>& all) {
        return std::vector<float>(all.begin(), all.begin() + span.prefix->length * kv_width);
      };
      span.prefix->keys[layer] = first_positions(span.cache->keys[layer]);
      span.prefix->values[layer] = first_positions(span.cache->values[layer]);
    }
  }
}

void CpuDecoder::snapshot_caches(const SequenceChunk& chunk, const CpuSequenceCache& cache,
                                 ForwardSnapshot& snapshot) const {
  const int64_t kv_width = static_cast<int64_t>(config_.num_kv_heads) * config_.head_dim;
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    LayerSnapshot& s = snapshot.layers[layer];
    if (config_.layer_kinds[layer] == LayerKind::FullAttention) {
      const auto rows = [&](const std::vector<float>& all) {
        return std::vector<float>(all.begin() + chunk.start * kv_width, all.begin() + (chunk.start + chunk.num_tokens) * kv_width);
      };
      s.keys = rows(cache.keys[layer]);
      s.values = rows(cache.values[layer]);
    } else {
      s.conv_state = cache.conv[layer];
      s.recurrent_state = cache.recurrent[layer];
    }
  }
}

void CpuDecoder::run_layer(int layer, float* x, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                           LayerSnapshot* snapshot) const {
  const int64_t dim = config_.hidden_size;
  const LayerParams& p = params_[layer];
  std::vector<float> h(num_tokens * dim), mixed(num_tokens * dim);
  // h = x + Mixer(RMSNorm1(x))
  cpu::rms_norm(x, num_tokens, dim, p.input_norm.data(), config_.norm_style, config_.rms_norm_eps, h.data());
  mixer(layer, h.data(), num_tokens, spans, mixed.data());
  for (int64_t i = 0; i < num_tokens * dim; ++i) x[i] += mixed[i];
  if (snapshot) snapshot->after_mixer.assign(x, x + num_tokens * dim);
  // out = h + MLP(RMSNorm2(h))
  cpu::rms_norm(x, num_tokens, dim, p.post_attention_norm.data(), config_.norm_style, config_.rms_norm_eps, h.data());
  mlp(layer, h.data(), num_tokens, mixed.data());
  for (int64_t i = 0; i < num_tokens * dim; ++i) x[i] += mixed[i];
  if (snapshot) snapshot->after_mlp.assign(x, x + num_tokens * dim);
}

void CpuDecoder::full_attention(int layer, const float* h, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                                float* out) const {
  const AttentionWeights& w = weights_.layers[layer].attention;
  const LayerParams& p = params_[layer];
  const int heads = config_.num_heads, kv_heads = config_.num_kv_heads, head_dim = config_.head_dim;
  const int64_t q_width = static_cast<int64_t>(heads) * head_dim, kv_width = static_cast<int64_t>(kv_heads) * head_dim;
  std::vector<float> q_proj, k_proj, v_proj;
  project(w.q_proj, h, num_tokens, q_proj);  // [T, H * (gate ? 2 : 1) * head_dim]
  project(w.k_proj, h, num_tokens, k_proj);  // [T, KV * head_dim]
  project(w.v_proj, h, num_tokens, v_proj);

  // Per token: split query and gate, q/k norm, RoPE at the token's position, append k and v to the cache.
  std::vector<float> query(num_tokens * q_width), gate(config_.attn_output_gate ? num_tokens * q_width : 0);
  std::vector<float> attended(num_tokens * q_width);
  for (const TokenSpan& span : spans) {
    auto& keys = span.cache->keys[layer];
    auto& values = span.cache->values[layer];
    for (int64_t i = 0; i < span.num_tokens; ++i) {
      const int64_t t = span.first_token + i, position = span.cache->length + i;
      const float* q_row = q_proj.data() + t * w.q_proj.out_features();
      float* q = query.data() + t * q_width;
      for (int hd = 0; hd < heads; ++hd) {
        // q_proj per head: [query (head_dim) | gate (head_dim)] when gated, else query only.
        const float* src = q_row + static_cast<int64_t>(hd) * head_dim * (config_.attn_output_gate ? 2 : 1);
        std::memcpy(q + static_cast<int64_t>(hd) * head_dim, src, head_dim * sizeof(float));
        if (config_.attn_output_gate) {
          std::memcpy(gate.data() + t * q_width + static_cast<int64_t>(hd) * head_dim, src + head_dim,
                      head_dim * sizeof(float));
        }
      }
      float* k = k_proj.data() + t * kv_width;
      if (config_.qk_norm) {
        cpu::rms_norm(q, heads, head_dim, p.q_norm.data(), config_.norm_style, config_.rms_norm_eps, q);
        cpu::rms_norm(k, kv_heads, head_dim, p.k_norm.data(), config_.norm_style, config_.rms_norm_eps, k);
      }
      rope_.apply(q, heads, head_dim, position);
      rope_.apply(k, kv_heads, head_dim, position);
      keys.insert(keys.end(), k, k + kv_width);
      values.insert(values.end(), v_proj.data() + t * kv_width, v_proj.data() + (t + 1) * kv_width);
    }
  }
  // Causal attention of every token over its sequence's cache, in parallel over tokens.
  std::vector<std::pair<const TokenSpan*, int64_t>> work;
  for (const TokenSpan& span : spans) {
    for (int64_t i = 0; i < span.num_tokens; ++i) work.emplace_back(&span, i);
  }
  const cpu::AttentionShape shape{heads, kv_heads, head_dim};
  ThreadPool::global().parallel_for(static_cast<int64_t>(work.size()), [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const auto [span, i] = work[job];
      const int64_t t = span->first_token + i, position = span->cache->length + i;
      cpu::attend_one_token(query.data() + t * q_width, span->cache->keys[layer].data(),
                            span->cache->values[layer].data(), position, shape, attended.data() + t * q_width);
    }
  });
  // out = o_proj(attn * sigmoid(gate))
  if (config_.attn_output_gate) {
    for (int64_t i = 0; i < num_tokens * q_width; ++i) attended[i] *= cpu::sigmoid(gate[i]);
  }
  linear(w.o_proj, attended.data(), num_tokens, out);
  all_reduce(out, num_tokens);
}

void CpuDecoder::gated_delta_net(int layer, const float* h, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                                 float* out) const {
  const GatedDeltaNetWeights& w = weights_.layers[layer].delta_net;
  const LayerParams& p = params_[layer];
  const cpu::GatedDeltaNetShape& shape = delta_net_shape_;
  const int64_t conv_dim = shape.conv_dim(), value_dim = shape.value_dim();
  std::vector<float> qkv, z, b, a;
  project(w.in_proj_qkv, h, num_tokens, qkv);  // [T, conv_dim], q | k | v
  project(w.in_proj_z, h, num_tokens, z);      // [T, value_dim]
  project(w.in_proj_b, h, num_tokens, b);      // [T, num_v_heads]
  project(w.in_proj_a, h, num_tokens, a);      // [T, num_v_heads]

  // Each sequence runs its tokens in order through the conv and the recurrent rule; sequences are
  // independent, so they run in parallel.
  std::vector<float> core(num_tokens * value_dim);
  ThreadPool::global().parallel_for(static_cast<int64_t>(spans.size()), [&](int64_t begin, int64_t end) {
    std::vector<float> mixed(conv_dim);
    for (int64_t s = begin; s < end; ++s) {
      const TokenSpan& span = spans[s];
      for (int64_t i = 0; i < span.num_tokens; ++i) {
        const int64_t t = span.first_token + i;
        cpu::causal_conv1d_step(qkv.data() + t * conv_dim, span.cache->conv[layer].data(), p.conv1d.data(), conv_dim,
                                shape.conv_kernel, mixed.data());
        cpu::gated_delta_rule_step(mixed.data(), a.data() + t * shape.num_v_heads, b.data() + t * shape.num_v_heads,
                                   p.a_log.data(), p.dt_bias.data(), shape, span.cache->recurrent[layer].data(),
                                   core.data() + t * value_dim);
        if (span.prefix && i + 1 == span.prefix_after) {
          span.prefix->conv[layer] = span.cache->conv[layer];
          span.prefix->recurrent[layer] = span.cache->recurrent[layer];
        }
      }
    }
  });
  // y = GatedRMSNorm(core, z) per value head; out = out_proj(y)
  cpu::gated_rms_norm(core.data(), z.data(), num_tokens * shape.num_v_heads, shape.v_head_dim, p.delta_norm.data(),
                      config_.rms_norm_eps, core.data());
  linear(w.out_proj, core.data(), num_tokens, out);
  all_reduce(out, num_tokens);
}

void CpuDecoder::mlp(int layer, const float* h, int64_t num_tokens, float* out) const {
  const MlpWeights& w = weights_.layers[layer].mlp;
  std::vector<float> gate, up;
  project(w.gate_proj, h, num_tokens, gate);  // [T, I]
  project(w.up_proj, h, num_tokens, up);
  for (size_t i = 0; i < gate.size(); ++i) gate[i] = cpu::silu(gate[i]) * up[i];  // silu(gate(x)) * up(x)
  linear(w.down_proj, gate.data(), num_tokens, out);  // down(...)
  all_reduce(out, num_tokens);
}

}  // namespace uberlm
