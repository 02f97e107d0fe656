#pragma once
// Perplexity of a model on a set of documents: every document is run from an empty cache, and each
// of its tokens after the first is scored by the logits of the tokens before it.
// ppl = exp(sum of -log p(token | prefix) / number of scored tokens).
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/backend.h"

namespace uberlm {

struct PerplexityResult {
  double total_nll = 0.0;  // natural log
  int64_t scored_tokens = 0;
  int64_t documents = 0;
  double perplexity() const;
};

// Documents run in batches of up to backend.max_slots(); on_document is called after each one.
PerplexityResult evaluate_perplexity(Backend& backend, const std::vector<std::vector<int32_t>>& documents,
                                     const std::function<void()>& on_document);

// -log softmax(logits)[target], in double.
double negative_log_likelihood(const float* logits, int vocab_size, int32_t target);

}  // namespace uberlm
