#pragma once
// What the engine asks of a backend (CPU reference or CUDA): run the decoder over a batch of token
// runs, each continuing one sequence whose caches the backend keeps in a numbered slot. Plain data
// in, logits out: the scheduler builds ForwardBatch without knowing which backend runs it.
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace uberlm {

struct SequenceChunk {
  int slot = 0;          // the sequence's cache slot
  int64_t num_tokens = 0;  // tokens of this run; their positions continue the slot's cached length
  bool want_logits = true;  // this run's last token's logits are returned (prefill chunks may skip)
};

struct ForwardBatch {
  std::vector<int32_t> tokens;        // all runs' tokens, concatenated in chunk order
  std::vector<SequenceChunk> chunks;
  bool logits_for_every_token = false;  // perplexity: logits of every token, not only the last
};

// logits: [rows, vocab] fp32; rows are the chunks that want logits, in order (every token of those
// chunks when logits_for_every_token).
struct ForwardResult {
  std::vector<float> logits;
  int64_t rows = 0;
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
  virtual ForwardResult forward(const ForwardBatch& batch) = 0;
};

}  // namespace uberlm
