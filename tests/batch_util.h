#pragma once
// Forward batches for tests that drive a backend directly, where the test itself plays the scheduler:
// it knows each sequence's start position.
#include <cstdint>
#include <vector>

#include "model/forward_batch.h"

namespace uberlm {

// `tokens` tokens of slot `slot` from position `start`.
inline SequenceChunk chunk_at(int slot, int64_t start, int64_t tokens, LogitRows logits = LogitRows::Last) {
  return SequenceChunk{.slot = slot, .start = start, .num_tokens = tokens, .logits = logits, .block_table = {}};
}

// A fake backend's answer for one logits row: `token` with all the probability (its one-hot logits
// row, and its id when the batch asks for the argmax only).
inline void append_one_hot_row(ForwardResult& result, const ForwardBatch& batch, int vocab, int token) {
  if (batch.argmax_only) result.argmax.push_back(token);
  std::vector<float> row(vocab, 0.0f);
  row[token] = 1.0f;
  result.logits.insert(result.logits.end(), row.begin(), row.end());
  ++result.rows;
}

// One run of one sequence.
inline ForwardBatch single_run(std::vector<int32_t> tokens, int slot, int64_t start, LogitRows logits = LogitRows::Last) {
  const int64_t count = static_cast<int64_t>(tokens.size());
  return ForwardBatch{std::move(tokens), {chunk_at(slot, start, count, logits)}};
}

}  // namespace uberlm
