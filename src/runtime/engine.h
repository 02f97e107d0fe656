#pragma once
// The engine: the one owner of sequences (their tokens, KV blocks and cache slots, through the Scheduler)
// and the one place a request's limits are checked. Each step is
//   schedule -> backend.forward -> sample each sequence with its own Sampler -> stop checks -> events.
// The server runs it on its own loop thread while HTTP threads submit requests and read each request's
// event queue; one-shot tools (`run`, `eval ppl`, `bench`) drive the same steps from their own thread
// (EngineConfig::loop_thread = false, run_step()). Per-sequence samplers and a batch-invariant forward make
// a request's output independent of the traffic around it.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "runtime/backend.h"
#include "runtime/metrics.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

struct EngineConfig {
  SchedulerConfig scheduler;
  int max_waiting = 256;   // queued requests beyond those running; more are refused (HTTP 503)
  bool loop_thread = true;  // false: the caller steps the engine with run_step()
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  // prompt + max_tokens must fit max_model_len; 0 only with score_prompt; unset: up to the context's end.
  std::optional<int64_t> max_tokens;
  SamplingParams sampling;
  std::vector<int> stop_token_ids;         // end the output, not part of it
  std::vector<std::string> stop_strings;   // end the output at their first occurrence, not part of it
  bool score_prompt = false;               // the final event carries every prompt token's logprob
  int top_logprobs = -1;  // >= 0: events carry each generated token's logprob and this many alternatives
};

// A request the engine refuses; `field` names the EngineRequest field at fault ("prompt", "max_tokens",
// "stop_strings", "sampling", "logit_bias" (a sampling id outside the vocabulary), "top_logprobs"), so a
// front end can name its own parameter.
class RequestError : public Error {
 public:
  RequestError(std::string field, const std::string& message) : Error(message), field(std::move(field)) {}
  std::string field;
};

enum class FinishReason { Stop, Length, Cancelled };
const char* finish_reason_name(FinishReason reason);

// One event per step that produced text (or tokens, without a tokenizer), and a final one with
// finished = true.
struct StreamEvent {
  std::string text;
  std::vector<int32_t> tokens;  // the generated ids since the last event (stop tokens excluded)
  std::vector<TokenLogprobs> logprobs;  // with top_logprobs >= 0: one per entry of tokens
  bool finished = false;
  FinishReason finish_reason = FinishReason::Length;
  std::string error;  // set when the engine failed the request (finish_reason Cancelled)
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  // With score_prompt, in the final event: log p(prompt[i] | prompt[..i]) for i >= 1 (index 0 is 0).
  std::vector<double> prompt_logprobs;
};

// What one engine step ran.
struct EngineStep {
  int64_t decode_tokens = 0;   // single-token chunks that sampled
  int64_t prefill_tokens = 0;  // every other token
  double forward_seconds = 0;  // the backend's forward, sampling excluded
};

// What an HTTP thread holds for a submitted request: its event queue.
class RequestStream {
 public:
  explicit RequestStream(uint64_t id) : id_(id) {}
  uint64_t id() const { return id_; }
  // Waits up to `timeout` for the next event; false on timeout.
  bool next(StreamEvent& event, std::chrono::milliseconds timeout);
  void push(StreamEvent event);

 private:
  uint64_t id_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<StreamEvent> events_;
};

class Engine {
 public:
  // tokenizer: null for models without one (synthetic shapes): events then carry ids and no text.
  Engine(Backend& backend, const BpeTokenizer* tokenizer, const EngineConfig& config, Metrics& metrics);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // nullptr when the queue is full. Throws RequestError on a request it cannot take (empty prompt, no
  // room to generate, prompt + max_tokens over max_model_len, token ids outside the vocabulary (prompt or
  // logit_bias), bad sampling params, top_logprobs or stop strings): the one place a request's limits are checked.
  std::shared_ptr<RequestStream> submit(EngineRequest request);
  // Without a loop thread: admits what was submitted and cancelled, then runs one step if there is work.
  EngineStep run_step();
  bool has_work() const;
  // Ends the request at the next step boundary and frees its caches; its stream gets a final event.
  void cancel(uint64_t id);
  int64_t max_model_len() const { return config_.scheduler.max_model_len; }
  // Running + queued requests (submitted, not yet finished).
  int in_flight() const;

 private:
  struct Active {
    std::shared_ptr<RequestStream> stream;
    EngineRequest request;
    Sampler sampler;
    std::optional<StreamDecoder> decoder;  // absent without a tokenizer
    std::string pending_text;  // decoded, not yet sent: held back while it could begin a stop string
    std::vector<int32_t> pending_tokens;  // generated ids not yet sent
    std::vector<TokenLogprobs> pending_logprobs;  // theirs, with top_logprobs >= 0
    std::vector<double> prompt_logprobs;
    size_t hold_back = 0;      // longest stop string - 1
    int64_t max_tokens = 0;  // request.max_tokens resolved against the context
    int64_t generated = 0;
    std::chrono::steady_clock::time_point arrival, last_token;
  };

  void loop();
  // Moves submitted and cancelled requests into the loop's state.
  void admit(std::vector<std::pair<uint64_t, Active>>& arrivals, const std::vector<uint64_t>& cancels);
  EngineStep step();
  void score_prompt_rows(const ScheduledChunk& chunk, Active& active, const float* logits);
  // logits: the row the token was sampled from (null when the backend took the argmax).
  void on_token(uint64_t id, Active& active, int32_t token, const float* logits);
  void finish(uint64_t id, FinishReason reason, const std::string& error = "");
  void update_gauges();

  Backend& backend_;
  const BpeTokenizer* tokenizer_;
  EngineConfig config_;
  Metrics& metrics_;
  Scheduler scheduler_;  // loop thread only
  std::unordered_map<uint64_t, Active> active_;  // loop thread only

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<std::pair<uint64_t, Active>> incoming_;
  std::vector<uint64_t> cancelled_;
  int in_flight_ = 0;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  std::thread thread_;
};

// One request run to its end on an engine without a loop thread (a one-shot tool such as `uberlm run`):
// on_event(event) for each event as it comes; the final one has finished set.
struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double prefill_seconds = 0.0;  // submission to the first generated token
  double decode_seconds = 0.0;   // from the first generated token to the last
  FinishReason finish_reason = FinishReason::Length;
};
GenerationStats generate(Engine& engine, EngineRequest request, const std::function<void(const StreamEvent&)>& on_event);

}  // namespace uberlm
