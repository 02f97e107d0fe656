#pragma once
// The reference decoder: Qwen3.5 hybrid (Gated DeltaNet + gated attention) and the dense Llama
// family, in fp32 on the CPU, written step by step after spec/qwen3_5.md. It is the ground truth
// every GPU path is checked against.
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/forward_batch.h"
#include "model/tensor_parallel.h"
#include "model/weights.h"
#include "ops/cpu/gated_delta_net.h"
#include "ops/cpu/rope.h"

namespace uberlm {

// One sequence's caches, per layer (entries of the other layer kind stay empty).
struct CpuSequenceCache {
  int64_t length = 0;                        // tokens already processed
  std::vector<std::vector<float>> keys;      // full attention: [length, KV, head_dim]
  std::vector<std::vector<float>> values;    // full attention: [length, KV, head_dim]
  std::vector<std::vector<float>> conv;      // Gated DeltaNet: [conv_dim, kernel - 1]
  std::vector<std::vector<float>> recurrent; // Gated DeltaNet: [num_v_heads, k_head_dim, v_head_dim]
};

class CpuDecoder {
 public:
  // With `collectives`, config and weights are one rank's shard (model/tensor_parallel.h): the outputs of
  // o_proj, out_proj and down_proj are all-reduced and lm_head's vocabulary slices all-gathered.
  CpuDecoder(const ModelConfig& config, const ModelWeights& weights, HostCollectives* collectives = nullptr);

  CpuSequenceCache new_cache() const;
  // Runs `batch`; caches[chunk.slot] is the cache of each chunk's sequence: a chunk at start 0 empties it
  // first, any other start must equal its length; it grows by the chunk's tokens. A chunk's prefix save
  // (SequenceChunk::prefix_save_snapshot) fills prefixes[snapshot] with the cache as it was after that many
  // of the run's tokens. With `snapshot`, also records every layer's residual stream and the first chunk's
  // caches written.
  ForwardResult forward(const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches,
                        std::vector<CpuSequenceCache>& prefixes, ForwardSnapshot* snapshot = nullptr) const;

  // One sublayer on normed input h [T, D] -> out [T, D] (a shard's partial sum without collectives).
  // mixer appends the batch's keys, values and states to the caches but leaves their lengths.
  void mixer(int layer, const float* h, const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches,
             float* out) const;
  void mlp(int layer, const float* h, int64_t num_tokens, float* out) const;

 private:
  // fp32 copies of the small per-layer tensors (norms, conv, decay parameters).
  struct LayerParams {
    std::vector<float> input_norm, post_attention_norm, q_norm, k_norm;
    std::vector<float> conv1d, dt_bias, a_log, delta_norm;
  };
  struct TokenSpan {
    CpuSequenceCache* cache;
    int64_t first_token;  // row in the flattened batch
    int64_t num_tokens;
    CpuSequenceCache* prefix = nullptr;  // the prefix save's snapshot, taken after `prefix_after` tokens
    int64_t prefix_after = 0;
  };

  // prefixes: where the chunks' prefix saves go; nullptr ignores them (a lone sublayer).
  std::vector<TokenSpan> spans_of(const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches,
                                  std::vector<CpuSequenceCache>* prefixes) const;
  // After the layers: a prefix save's keys and values (the first positions of its cache's) and length.
  void finish_prefix_saves(const std::vector<TokenSpan>& spans) const;
  void begin_runs(const ForwardBatch& batch, std::vector<CpuSequenceCache>& caches) const;
  // out [T, D]: sums the ranks' partial outputs of a row-parallel layer.
  void all_reduce(float* out, int64_t num_tokens) const;
  // x: [T, D] hidden states, updated in place by one layer.
  void run_layer(int layer, float* x, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                 LayerSnapshot* snapshot) const;
  // The first chunk's caches this forward wrote (after the forward: the cache's length includes them).
  void snapshot_caches(const SequenceChunk& chunk, const CpuSequenceCache& cache, ForwardSnapshot& snapshot) const;
  // h: [T, D] normed input -> out: [T, D] mixer output.
  void mixer(int layer, const float* h, int64_t num_tokens, const std::vector<TokenSpan>& spans, float* out) const;
  void full_attention(int layer, const float* h, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                      float* out) const;
  void gated_delta_net(int layer, const float* h, int64_t num_tokens, const std::vector<TokenSpan>& spans,
                       float* out) const;

  const ModelConfig& config_;
  const ModelWeights& weights_;
  HostCollectives* collectives_;
  std::vector<LayerParams> params_;
  std::vector<float> final_norm_;
  cpu::Rope rope_;
  cpu::GatedDeltaNetShape delta_net_shape_;
};

}  // namespace uberlm
