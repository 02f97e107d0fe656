#include "runtime/perplexity.h"

#include <cmath>
#include <deque>
#include <memory>

#include "core/error.h"

namespace uberlm {

double PerplexityResult::perplexity() const {
  return scored_tokens > 0 ? std::exp(total_nll / static_cast<double>(scored_tokens)) : NAN;
}

PerplexityResult evaluate_perplexity(Engine& engine, const std::vector<std::vector<int32_t>>& documents,
                                     const std::function<void()>& on_document) {
  for (size_t i = 0; i < documents.size(); ++i) {
    if (documents[i].size() < 2) fail("perplexity: document {} has fewer than 2 tokens", i);
  }
  PerplexityResult result;
  std::deque<std::shared_ptr<RequestStream>> scoring;
  size_t next = 0;
  while (next < documents.size() || !scoring.empty()) {
    // Keep the engine's queue full: it refuses (nullptr) once max_num_seqs + max_waiting are in flight.
    while (next < documents.size()) {
      EngineRequest request;
      request.prompt = documents[next];
      request.max_tokens = 0;
      request.score_prompt = true;
      std::shared_ptr<RequestStream> stream = engine.submit(std::move(request));
      if (!stream) break;
      scoring.push_back(std::move(stream));
      ++next;
    }
    engine.run_step();
    // Summed in submission order (a fixed order of additions); a later document that finished first waits
    // in its stream.
    StreamEvent event;
    while (!scoring.empty() && scoring.front()->next(event, std::chrono::milliseconds(0))) {
      if (!event.finished) continue;
      if (!event.error.empty()) fail("perplexity: document {} failed: {}", result.documents, event.error);
      for (size_t t = 1; t < event.prompt_logprobs.size(); ++t) result.total_nll -= event.prompt_logprobs[t];
      result.scored_tokens += static_cast<int64_t>(event.prompt_logprobs.size()) - 1;
      ++result.documents;
      scoring.pop_front();
      on_document();
    }
  }
  return result;
}

}  // namespace uberlm
