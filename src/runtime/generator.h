#pragma once
// Single-sequence generation on any backend: prefill the prompt, then decode token by token until
// a stop token or max_tokens. Used by `uberlm run`; the server has its own batched engine loop.
#include <functional>
#include <vector>

#include "runtime/backend.h"
#include "runtime/sampler.h"

namespace uberlm {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  int max_tokens = 128;
  SamplingParams sampling;
  std::vector<int> stop_token_ids;
};

enum class FinishReason { Stop, Length, Cancelled };

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // from the first generated token to the last
  FinishReason finish_reason = FinishReason::Length;
};

// on_token(id) is called for each generated token (stop tokens excluded); returning false cancels.
GenerationStats generate(Backend& backend, int slot, const GenerationRequest& request,
                         const std::function<bool(int32_t)>& on_token);

}  // namespace uberlm
