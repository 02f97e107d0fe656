#include "eval/decoding_batch.h"

#include <memory>

#include "core/error.h"

namespace uberlm {

namespace {
constexpr int kMaxSetupSteps = 100000;
}

std::vector<int32_t> synthetic_prompt(int64_t length, int salt, int vocab) {
  std::vector<int32_t> tokens(length);
  for (int64_t i = 0; i < length; ++i) tokens[i] = static_cast<int32_t>((salt * 7919 + i * 104729 + 13) % vocab);
  return tokens;
}

int setup_tokens(int batch, int context, int64_t step_tokens) {
  if (step_tokens <= batch) fail("decoding batch: steps of {} tokens cannot admit {} sequences while they decode", step_tokens, batch);
  const int64_t prompt_tokens = static_cast<int64_t>(batch) * context;
  // Every step prefills at least step_tokens - batch prompt tokens, and a prompt cut at a step's end costs one
  // more step per sequence.
  return static_cast<int>((prompt_tokens + step_tokens - batch - 1) / (step_tokens - batch) + batch + 1);
}

DecodingBatch::DecodingBatch(Engine& engine, int batch, int context, int max_tokens, int vocab)
    : engine_(engine), batch_(batch) {
  for (int s = 0; s < batch; ++s) {
    EngineRequest request;
    request.prompt = synthetic_prompt(context, s, vocab);
    request.max_tokens = max_tokens;
    std::shared_ptr<RequestStream> stream = engine.submit(std::move(request));
    if (!stream) fail("decoding batch: the engine refused sequence {} of {}", s, batch);
    ids_.push_back(stream->id());
  }
  int warm = 0;
  for (int step = 0; warm < kWarmSteps; ++step) {
    if (step == kMaxSetupSteps) fail("decoding batch: {} sequences did not all reach decode in {} steps", batch, step);
    warm += is_full_decode(engine.run_step());
  }
}

DecodingBatch::~DecodingBatch() {
  for (uint64_t id : ids_) engine_.cancel(id);
  engine_.run_step();
}

}  // namespace uberlm
