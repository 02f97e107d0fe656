#include "runtime/generator.h"

#include <algorithm>
#include <chrono>

#include "core/error.h"

namespace uberlm {

namespace {
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

GenerationStats generate(Backend& backend, int slot, const GenerationRequest& request,
                         const std::function<bool(int32_t)>& on_token) {
  if (request.prompt.empty()) fail("generate: the prompt is empty");
  const int vocab = backend.config().vocab_size;
  Sampler sampler(request.sampling);
  GenerationStats stats;
  stats.prompt_tokens = static_cast<int64_t>(request.prompt.size());

  auto start = std::chrono::steady_clock::now();
  ForwardBatch batch;
  batch.tokens = request.prompt;
  batch.chunks = {SequenceChunk{slot, stats.prompt_tokens, true, /*block_table=*/{}}};
  ForwardResult result = backend.forward(batch);
  stats.prefill_seconds = seconds_since(start);

  start = std::chrono::steady_clock::now();
  for (int step = 0; step < request.max_tokens; ++step) {
    const int32_t token = sampler.sample(result.logits.data(), vocab);
    if (std::find(request.stop_token_ids.begin(), request.stop_token_ids.end(), token) !=
        request.stop_token_ids.end()) {
      stats.finish_reason = FinishReason::Stop;
      break;
    }
    ++stats.generated_tokens;
    if (!on_token(token)) {
      stats.finish_reason = FinishReason::Cancelled;
      break;
    }
    if (step + 1 == request.max_tokens) break;
    batch.tokens = {token};
    batch.chunks = {SequenceChunk{slot, 1, true, /*block_table=*/{}}};
    result = backend.forward(batch);
  }
  stats.decode_seconds = seconds_since(start);
  return stats;
}

}  // namespace uberlm
