#pragma once
// One forward of the decoder as plain data: token runs in, logits out. The scheduler builds it, every
// backend (and the CPU reference decoder under model/) runs it. Which tokens a sequence has is the
// scheduler's to know: each run says where it starts, and a backend only keeps the caches it is told to
// continue (a run starting at 0 begins its slot afresh).
#include <cstdint>
#include <vector>

namespace uberlm {

// Which of a run's tokens produce logits rows.
enum class LogitRows {
  None,  // a prefill chunk that does not reach the end of the prompt
  Last,  // the next-token distribution (decode, the end of a prompt)
  All,   // every token's (perplexity, prompt logprobs)
};

struct SequenceChunk {
  int slot = 0;             // the sequence's cache slot (its Gated DeltaNet state, its host KV cache)
  int64_t start = 0;        // position of the run's first token: how many of the sequence's tokens are cached
  int64_t num_tokens = 0;   // tokens of this run, at positions start .. start + num_tokens - 1
  LogitRows logits = LogitRows::Last;
  // Block ids of the sequence's KV, position p in block_table[p / block_size], covering at least
  // start + num_tokens positions. Paged backends (Backend::kv_block_pool) need it; others ignore it.
  std::vector<int32_t> block_table;
  // Prefix caching (runtime/prefix_cache.h): after the run's first `prefix_save_after` tokens (1..num_tokens),
  // the backend keeps what the slot's caches hold then as prefix snapshot `prefix_save_snapshot`
  // (Backend::restore_prefix brings it back); -1: no save. A save inside the run costs no second forward: only
  // the Gated DeltaNet states, which no later token leaves as they were, are taken between its tokens.
  int prefix_save_snapshot = -1;
  int64_t prefix_save_after = 0;

  int64_t logit_rows() const {
    return num_tokens == 0 ? 0 : logits == LogitRows::All ? num_tokens : logits == LogitRows::Last ? 1 : 0;
  }
};

struct ForwardBatch {
  std::vector<int32_t> tokens;  // all runs' tokens, concatenated in chunk order
  std::vector<SequenceChunk> chunks;
  // The caller needs only each row's argmax (greedy decoding): the backend fills ForwardResult::argmax
  // and may leave logits empty (the CUDA backend then copies rows ids, not rows x vocab floats).
  bool argmax_only = false;

  int64_t logit_rows() const {
    int64_t rows = 0;
    for (const SequenceChunk& chunk : chunks) rows += chunk.logit_rows();
    return rows;
  }
};

// logits: [rows, vocab] fp32, the chunks' rows in chunk order (LogitRows), within a chunk in token order.
struct ForwardResult {
  std::vector<float> logits;
  int64_t rows = 0;
  std::vector<int32_t> argmax;  // [rows] with argmax_only: the smallest id of each row's maximum
  // Which kernels ran the step's layers (the CUDA backend's --decode-path): the fused launches, or the unfused ones
  // where the fused were asked for and cannot run the model (a fallback); neither for other steps and backends.
  bool fused_kernels = false;
  bool fused_fallback = false;
};

// What an observed forward leaves per layer (`uberlm check`): the residual stream after the mixer and after
// the MLP for every token, and the caches of the batch's first chunk's sequence that this forward wrote.
// Values a backend keeps in bf16 (the GPU's KV cache) are given as the fp32 values of those bf16 numbers.
struct LayerSnapshot {
  std::vector<float> after_mixer;      // [T, D]: x + mixer(RMSNorm1(x))
  std::vector<float> after_mlp;        // [T, D]: the layer's output
  std::vector<float> keys, values;     // full attention: the chunk's new positions [n, KV * head_dim]
  std::vector<float> conv_state;       // Gated DeltaNet: the last kernel - 1 conv inputs [conv_dim, kernel - 1]
  std::vector<float> recurrent_state;  // Gated DeltaNet: [Hv, dk, dv]
};

struct ForwardSnapshot {
  std::vector<LayerSnapshot> layers;
};

}  // namespace uberlm
