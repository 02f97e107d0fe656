#pragma once
// Engines driven into the state a server is in while decoding, for measurements (`bench`, `tune`):
// `batch` greedy sequences of synthetic prompts, prefilled and past kWarmSteps steps in which all of them
// decode together (the batch size's CUDA graph captured).
#include <cstdint>
#include <vector>

#include "runtime/engine.h"

namespace uberlm {

// Decode steps every sequence has run before a DecodingBatch is ready.
inline constexpr int kWarmSteps = 3;
// Generated tokens of room for the sequences admitted first, which decode while the later ones prefill: at most
// this many steps when each step holds `step_tokens` tokens, of which the running sequences take one each
// (step_tokens must exceed batch).
int setup_tokens(int batch, int context, int64_t step_tokens);

// `length` token ids spread over the vocabulary, different for each salt.
std::vector<int32_t> synthetic_prompt(int64_t length, int salt, int vocab);

class DecodingBatch {
 public:
  // engine: without a loop thread. Each sequence may generate max_tokens tokens (at least
  // kSetupTokens + kWarmSteps + the steps the caller runs).
  DecodingBatch(Engine& engine, int batch, int context, int max_tokens, int vocab);
  ~DecodingBatch();  // cancels the sequences
  DecodingBatch(const DecodingBatch&) = delete;
  DecodingBatch& operator=(const DecodingBatch&) = delete;
  // A step in which every sequence decoded one token and nothing prefilled.
  bool is_full_decode(const EngineStep& step) const { return step.decode_tokens == batch_ && step.prefill_tokens == 0; }

 private:
  Engine& engine_;
  int batch_;
  std::vector<uint64_t> ids_;
};

}  // namespace uberlm
