#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace uberlm {

double PerplexityResult::perplexity() const {
  return scored_tokens > 0 ? std::exp(total_nll / static_cast<double>(scored_tokens)) : NAN;
}

double negative_log_likelihood(const float* logits, int vocab_size, int32_t target) {
  const float max_logit = *std::max_element(logits, logits + vocab_size);
  double sum = 0.0;
  for (int i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  return std::log(sum) + max_logit - logits[target];
}

PerplexityResult evaluate_perplexity(Backend& backend, const std::vector<std::vector<int32_t>>& documents,
                                     const std::function<void()>& on_document) {
  const int vocab = backend.config().vocab_size;
  const size_t batch_size = static_cast<size_t>(std::max(1, backend.max_slots()));
  PerplexityResult result;
  for (size_t first = 0; first < documents.size(); first += batch_size) {
    const size_t count = std::min(batch_size, documents.size() - first);
    ForwardBatch batch;
    batch.logits_for_every_token = true;
    for (size_t i = 0; i < count; ++i) {
      const auto& doc = documents[first + i];
      if (doc.size() < 2) fail("perplexity: document {} has fewer than 2 tokens", first + i);
      batch.tokens.insert(batch.tokens.end(), doc.begin(), doc.end());
      batch.chunks.push_back(SequenceChunk{static_cast<int>(i), static_cast<int64_t>(doc.size()), true, /*block_table=*/{}});
    }
    ForwardResult forward = backend.forward(batch);
    int64_t row = 0;
    for (size_t i = 0; i < count; ++i) {
      const auto& doc = documents[first + i];
      for (size_t t = 0; t + 1 < doc.size(); ++t) {
        result.total_nll += negative_log_likelihood(&forward.logits[(row + t) * vocab], vocab, doc[t + 1]);
      }
      row += static_cast<int64_t>(doc.size());
      result.scored_tokens += static_cast<int64_t>(doc.size()) - 1;
      ++result.documents;
      backend.release(static_cast<int>(i));
      on_document();
    }
  }
  return result;
}

}  // namespace uberlm
