#pragma once
// What the engine asks of a backend (CPU reference or CUDA): run the decoder over a batch of token
// runs, each continuing one sequence whose caches the backend keeps in a numbered slot. Plain data
// in, logits out: the scheduler builds ForwardBatch without knowing which backend runs it.
//
// Full-attention keys and values live either in the backend's own per-slot caches (the CPU backend,
// and the CUDA backend driven by one-shot tools such as `uberlm run`), or in a paged pool whose blocks
// the scheduler hands out: then the backend reports the pool (kv_block_pool()), every chunk carries
// its sequence's block table, and the backend writes and reads exactly the blocks it is given.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "model/config.h"

namespace uberlm {

struct SequenceChunk {
  int slot = 0;          // the sequence's cache slot
  int64_t num_tokens = 0;  // tokens of this run; their positions continue the slot's cached length
  bool want_logits = true;  // this run's last token's logits are returned (prefill chunks may skip)
  // Block ids of the sequence's KV, position p in block_table[p / block_size], covering at least the
  // slot's cached length + num_tokens. Backends with a scheduler-owned pool need it; others ignore it.
  std::vector<int32_t> block_table;
};

struct ForwardBatch {
  std::vector<int32_t> tokens;        // all runs' tokens, concatenated in chunk order
  std::vector<SequenceChunk> chunks;
  bool logits_for_every_token = false;  // perplexity: logits of every token, not only the last
  // The caller needs only each row's argmax (greedy decoding): the backend fills ForwardResult::argmax
  // and may leave logits empty (the CUDA backend then copies rows ids, not rows x vocab floats).
  bool argmax_only = false;
};

// logits: [rows, vocab] fp32; rows are the chunks that want logits, in order (every token of those
// chunks when logits_for_every_token).
struct ForwardResult {
  std::vector<float> logits;
  int64_t rows = 0;
  std::vector<int32_t> argmax;  // [rows] with argmax_only: the smallest id of each row's maximum
};

// The paged KV pool a scheduler allocates from: block ids 0..num_blocks-1 of block_size tokens.
struct KvBlockPool {
  int block_size = 16;
  int64_t num_blocks = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual const ModelConfig& config() const = 0;
  // Slots: a free slot is empty; release() forgets a sequence's caches.
  virtual int max_slots() const = 0;
  virtual int64_t cached_length(int slot) const = 0;
  virtual void release(int slot) = 0;
  // The pool whose block tables forward() expects in SequenceChunk::block_table; nullopt when the
  // backend keeps its own caches per slot.
  virtual std::optional<KvBlockPool> kv_block_pool() const { return std::nullopt; }
  virtual ForwardResult forward(const ForwardBatch& batch) = 0;
};

}  // namespace uberlm
