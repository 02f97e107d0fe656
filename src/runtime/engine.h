#pragma once
// The serving engine: one loop thread owns the scheduler and the backend and repeats
//   schedule -> backend.forward -> sample each sequence with its own Sampler -> stop checks -> events
// while HTTP threads submit requests and read each request's event queue. The loop is the same for
// every Backend; per-sequence samplers and a batch-invariant forward make a request's output
// independent of the traffic around it.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "runtime/backend.h"
#include "runtime/generator.h"
#include "runtime/metrics.h"
#include "runtime/sampler.h"
#include "runtime/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

struct EngineConfig {
  SchedulerConfig scheduler;
  int max_waiting = 256;  // queued requests beyond those running; more are refused (HTTP 503)
};

struct EngineRequest {
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;  // prompt + max_tokens must fit max_model_len
  SamplingParams sampling;
  std::vector<int> stop_token_ids;         // end the output, not part of it
  std::vector<std::string> stop_strings;   // end the output at their first occurrence, not part of it
};

const char* finish_reason_name(FinishReason reason);

// One event per step that produced text, and a final one with finished = true.
struct StreamEvent {
  std::string text;
  bool finished = false;
  FinishReason finish_reason = FinishReason::Length;
  std::string error;  // set when the engine failed the request (finish_reason Cancelled)
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
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
  Engine(Backend& backend, const BpeTokenizer& tokenizer, const EngineConfig& config, Metrics& metrics);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // nullptr when the queue is full. Throws Error on a request the scheduler cannot take (empty prompt,
  // prompt + max_tokens over max_model_len, token ids outside the vocabulary, bad sampling params).
  std::shared_ptr<RequestStream> submit(EngineRequest request);
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
    StreamDecoder decoder;
    std::string pending_text;  // decoded, not yet sent: held back while it could begin a stop string
    size_t hold_back = 0;      // longest stop string - 1
    int64_t generated = 0;
    std::chrono::steady_clock::time_point arrival, last_token;
  };

  void loop();
  void step();
  void on_token(uint64_t id, Active& active, int32_t token);
  void finish(uint64_t id, FinishReason reason, const std::string& error = "");
  void update_gauges();

  Backend& backend_;
  const BpeTokenizer& tokenizer_;
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

}  // namespace uberlm
