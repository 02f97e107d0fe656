#pragma once
// Perplexity of a model on a set of documents, scored through the Engine: each document is a request
// with score_prompt and nothing to generate, run from an empty cache and batched as the engine
// schedules it; each of its tokens after the first is scored by the logits of the tokens before it.
// ppl = exp(sum of -log p(token | prefix) / number of scored tokens).
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/engine.h"

namespace uberlm {

struct PerplexityResult {
  double total_nll = 0.0;  // natural log
  int64_t scored_tokens = 0;
  int64_t documents = 0;
  double perplexity() const;
};

// engine: without a loop thread (EngineConfig::loop_thread = false); on_document is called as each
// document is scored.
PerplexityResult evaluate_perplexity(Engine& engine, const std::vector<std::vector<int32_t>>& documents,
                                     const std::function<void()>& on_document);

}  // namespace uberlm
