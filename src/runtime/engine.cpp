#include "runtime/engine.h"

#include <algorithm>

#include "core/error.h"

namespace uberlm {

namespace {

constexpr int kMaxTopLogprobs = 20;  // OpenAI's limit

double seconds_between(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// The longest prefix of `text` that does not end inside a UTF-8 sequence, at most `limit` bytes.
size_t utf8_safe_prefix(const std::string& text, size_t limit) {
  size_t end = std::min(limit, text.size());
  while (end > 0 && end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return end;
}

}  // namespace

const char* finish_reason_name(FinishReason reason) {
  switch (reason) {
    case FinishReason::Stop:
      return "stop";
    case FinishReason::Length:
      return "length";
    case FinishReason::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

bool RequestStream::next(StreamEvent& event, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [&] { return !events_.empty(); })) return false;
  event = std::move(events_.front());
  events_.pop_front();
  return true;
}

void RequestStream::push(StreamEvent event) {
  {
    std::lock_guard lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_all();
}

Engine::Engine(Backend& backend, const BpeTokenizer* tokenizer, const EngineConfig& config, Metrics& metrics)
    : backend_(backend), tokenizer_(tokenizer), config_(config), metrics_(metrics), scheduler_(config.scheduler) {
  if (config.scheduler.num_slots > backend.max_slots()) {
    fail("engine: scheduler wants {} cache slots, backend {} has {}", config.scheduler.num_slots, backend.name(),
         backend.max_slots());
  }
  if (config.max_waiting < 0) fail("engine: max_waiting must be >= 0, got {}", config.max_waiting);
  if (std::optional<KvBlockPool> pool = backend.kv_block_pool()) {
    if (config.scheduler.num_kv_blocks > pool->num_blocks) {
      fail("engine: scheduler wants {} KV blocks, backend {} has a pool of {}", config.scheduler.num_kv_blocks,
           backend.name(), pool->num_blocks);
    }
  }
  if (config.scheduler.prefix_snapshots > backend.max_prefix_snapshots()) {
    fail("engine: prefix caching wants {} snapshots, backend {} keeps {}", config.scheduler.prefix_snapshots,
         backend.name(), backend.max_prefix_snapshots());
  }
  metrics_.set(Gauge::KvBlocksTotal, static_cast<double>(scheduler_.blocks().kv_blocks_total()));
  metrics_.set(Gauge::PrefixCacheSnapshotsTotal, config.scheduler.prefix_snapshots);
  metrics_.set(Gauge::StateSlotsTotal, scheduler_.blocks().slots_total());
  if (config.loop_thread) thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

int Engine::in_flight() const {
  std::lock_guard lock(mutex_);
  return in_flight_;
}

namespace {

[[noreturn]] void refuse(const char* field, const std::string& message) { throw RequestError(field, message); }

// The request's token budget: max_tokens checked against the context, or the rest of the context.
int64_t resolve_max_tokens(const EngineRequest& request, int vocab, int64_t max_model_len) {
  const int64_t prompt_tokens = static_cast<int64_t>(request.prompt.size());
  if (prompt_tokens == 0) refuse("prompt", "the prompt is empty");
  for (int32_t token : request.prompt) {
    if (token < 0 || token >= vocab) {
      refuse("prompt", fmt::format("prompt token id {} is outside the vocabulary [0, {})", token, vocab));
    }
  }
  const int64_t least = request.score_prompt ? 0 : 1;
  if (prompt_tokens + least > max_model_len) {
    refuse("prompt", fmt::format("the prompt is {} tokens; max-model-len {} leaves no room to generate", prompt_tokens,
                                 max_model_len));
  }
  const int64_t max_tokens = request.max_tokens.value_or(max_model_len - prompt_tokens);
  if (max_tokens < least) refuse("max_tokens", fmt::format("max_tokens must be at least {}, got {}", least, max_tokens));
  if (prompt_tokens + max_tokens > max_model_len) {
    refuse("max_tokens", fmt::format("this model's maximum context length is {} tokens, but {} were requested ({} in "
                                     "the prompt, {} to generate)",
                                     max_model_len, prompt_tokens + max_tokens, prompt_tokens, max_tokens));
  }
  return max_tokens;
}

// The request's Sampler; a logit_bias id outside the vocabulary is refused by name.
Sampler checked_sampler(const EngineRequest& request, int vocab) {
  for (const auto& [token, bias] : request.sampling.logit_bias) {
    if (token < 0 || token >= vocab) {
      refuse("logit_bias", fmt::format("logit_bias token id {} is outside the vocabulary [0, {})", token, vocab));
    }
  }
  try {
    return Sampler(request.sampling, request.prompt);
  } catch (const Error& error) {
    refuse("sampling", error.what());
  }
}

}  // namespace

std::shared_ptr<RequestStream> Engine::submit(EngineRequest request) {
  const int64_t prompt_tokens = static_cast<int64_t>(request.prompt.size());
  const int64_t max_tokens = resolve_max_tokens(request, backend_.config().vocab_size, max_model_len());
  Sampler sampler = checked_sampler(request, backend_.config().vocab_size);
  if (request.top_logprobs < -1 || request.top_logprobs > kMaxTopLogprobs) {
    refuse("top_logprobs",
           fmt::format("top_logprobs must be in [0, {}], got {}", kMaxTopLogprobs, request.top_logprobs));
  }
  size_t longest_stop = 0;
  for (const std::string& stop : request.stop_strings) {
    if (stop.empty()) refuse("stop_strings", "stop strings must not be empty");
    longest_stop = std::max(longest_stop, stop.size());
  }

  std::lock_guard lock(mutex_);
  if (stopping_ || in_flight_ >= config_.scheduler.max_num_seqs + config_.max_waiting) return nullptr;
  const uint64_t id = next_id_++;
  auto stream = std::make_shared<RequestStream>(id);
  const auto now = std::chrono::steady_clock::now();
  Active active{stream, std::move(request), sampler, std::nullopt, "", {}, {}, {},
                longest_stop > 0 ? longest_stop - 1 : 0, max_tokens, 0, now, now};
  if (tokenizer_) active.decoder.emplace(*tokenizer_, /*skip_special=*/true);
  if (active.request.score_prompt) active.prompt_logprobs.assign(active.request.prompt.size(), 0.0);
  incoming_.emplace_back(id, std::move(active));
  ++in_flight_;
  metrics_.add(Counter::PromptTokens, static_cast<double>(prompt_tokens));
  wake_.notify_one();
  return stream;
}

void Engine::cancel(uint64_t id) {
  {
    std::lock_guard lock(mutex_);
    cancelled_.push_back(id);
  }
  wake_.notify_one();
}

void Engine::admit(std::vector<std::pair<uint64_t, Active>>& arrivals, const std::vector<uint64_t>& cancels) {
  for (auto& [id, active] : arrivals) {
    scheduler_.add(id, active.request.prompt, active.request.score_prompt);
    active_.emplace(id, std::move(active));
  }
  for (uint64_t id : cancels) {
    if (active_.count(id)) finish(id, FinishReason::Cancelled);
  }
}

bool Engine::has_work() const {
  std::lock_guard lock(mutex_);
  return !incoming_.empty() || !cancelled_.empty() || scheduler_.has_work();
}

EngineStep Engine::run_step() {
  if (config_.loop_thread) fail("engine: run_step() is for engines without a loop thread");
  std::vector<std::pair<uint64_t, Active>> arrivals;
  std::vector<uint64_t> cancels;
  {
    std::lock_guard lock(mutex_);
    arrivals.swap(incoming_);
    cancels.swap(cancelled_);
  }
  admit(arrivals, cancels);
  EngineStep report;
  if (scheduler_.has_work()) report = step();
  update_gauges();
  return report;
}

void Engine::loop() {
  while (true) {
    std::vector<std::pair<uint64_t, Active>> arrivals;
    std::vector<uint64_t> cancels;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !incoming_.empty() || !cancelled_.empty() || scheduler_.has_work(); });
      if (stopping_) break;
      arrivals.swap(incoming_);
      cancels.swap(cancelled_);
    }
    admit(arrivals, cancels);
    if (scheduler_.has_work()) step();
    update_gauges();
  }
  // Shutting down: every reader gets its final event.
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, active] : incoming_) active_.emplace(id, std::move(active));
    incoming_.clear();
  }
  std::vector<uint64_t> remaining;
  for (const auto& entry : active_) remaining.push_back(entry.first);
  for (uint64_t id : remaining) finish(id, FinishReason::Cancelled, "the server is shutting down");
}

EngineStep Engine::step() {
  SchedulerOutput out = scheduler_.schedule();
  for (int slot : out.released_slots) backend_.release(slot);
  if (!out.preempted.empty()) metrics_.add(Counter::Preemptions, static_cast<double>(out.preempted.size()));
  EngineStep report{out.num_decode_tokens, out.num_prefill_tokens, 0.0};
  // Restores before drops: a snapshot restored this step may also have been evicted by it.
  const auto restore_then_drop_prefixes = [&] {
    for (const SchedulerOutput::PrefixRestore& restore : out.prefix_restores) {
      backend_.restore_prefix(restore.snapshot, restore.slot);
    }
    for (int snapshot : out.dropped_snapshots) backend_.drop_prefix(snapshot);
  };
  if (out.chunks.empty()) {
    restore_then_drop_prefixes();  // evictions of a step that only preempted
    return report;
  }

  // When every row is a greedy sample of the model's own logits (no bias, no penalties) the backend picks
  // the tokens itself (the CUDA backend on the GPU, copying ids instead of rows x vocab logits); the same
  // argmax the Sampler takes at temperature 0.
  int64_t sampled_rows = 0;
  bool all_greedy = true;
  for (size_t c = 0; c < out.chunks.size(); ++c) {
    all_greedy = all_greedy && out.batch.chunks[c].logits != LogitRows::All;
    if (!out.chunks[c].samples) continue;
    ++sampled_rows;
    const EngineRequest& request = active_.at(out.chunks[c].id).request;
    all_greedy = all_greedy && request.sampling.is_plain_greedy() && request.top_logprobs < 0;
  }
  out.batch.argmax_only = all_greedy;
  ForwardResult result;
  const auto forward_start = std::chrono::steady_clock::now();
  try {
    restore_then_drop_prefixes();
    result = backend_.forward(out.batch);
    if (all_greedy && static_cast<int64_t>(result.argmax.size()) != sampled_rows) {
      fail("backend {} returned {} argmax rows for {} sampled sequences", backend_.name(), result.argmax.size(),
           sampled_rows);
    }
    scheduler_.confirm_prefix_saves();  // the forward took them
  } catch (const std::exception& error) {
    // The caches of this batch's sequences are in an unknown state: fail them, keep serving the rest.
    scheduler_.abandon_prefix_saves();
    for (const ScheduledChunk& chunk : out.chunks) finish(chunk.id, FinishReason::Cancelled, error.what());
    return report;
  }
  metrics_.add(Counter::PrefixCacheQueriedTokens, static_cast<double>(out.prefix_queried_tokens));
  metrics_.add(Counter::PrefixCacheHitTokens, static_cast<double>(out.prefix_hit_tokens));
  report.forward_seconds = seconds_between(forward_start, std::chrono::steady_clock::now());
  const char* path = out.num_prefill_tokens == 0 ? "decode" : out.num_decode_tokens == 0 ? "prefill" : "mixed";
  const std::string labels = fmt::format("backend=\"{}\",path=\"{}\"", backend_.name(), path);
  metrics_.add(Counter::EngineSteps, 1.0, labels);
  metrics_.add(Counter::StepTokens, static_cast<double>(out.batch.tokens.size()), labels);
  const std::string backend_label = fmt::format("backend=\"{}\"", backend_.name());
  if (result.fused_kernels) metrics_.add(Counter::FusedDecodeSteps, 1.0, backend_label);
  if (result.fused_fallback) metrics_.add(Counter::FusedDecodeFallbackSteps, 1.0, backend_label);

  const int vocab = backend_.config().vocab_size;
  int64_t row = 0, greedy_row = 0;
  for (size_t c = 0; c < out.chunks.size(); ++c) {
    const ScheduledChunk& chunk = out.chunks[c];
    const int64_t rows = out.batch.chunks[c].logit_rows();
    if (rows == 0) continue;
    Active& active = active_.at(chunk.id);
    if (out.batch.chunks[c].logits == LogitRows::All) score_prompt_rows(chunk, active, result.logits.data() + row * vocab);
    row += rows;
    if (!chunk.samples) continue;
    if (active.max_tokens == 0) {
      finish(chunk.id, FinishReason::Length);
      continue;
    }
    const float* logits = all_greedy ? nullptr : result.logits.data() + (row - 1) * vocab;
    const int32_t token = all_greedy ? result.argmax[greedy_row++] : active.sampler.sample(logits, vocab);
    on_token(chunk.id, active, token, logits);
  }
  return report;
}

// Row i of the chunk holds the logits after token first_token + i: they score the prompt token after it.
void Engine::score_prompt_rows(const ScheduledChunk& chunk, Active& active, const float* logits) {
  const int vocab = backend_.config().vocab_size;
  const std::vector<int32_t>& prompt = active.request.prompt;
  for (int64_t i = 0; i < chunk.num_tokens; ++i) {
    const int64_t next = chunk.first_token + i + 1;
    if (next >= static_cast<int64_t>(prompt.size())) break;
    active.prompt_logprobs[next] = log_probability(logits + i * vocab, vocab, prompt[next]);
  }
}

void Engine::on_token(uint64_t id, Active& active, int32_t token, const float* logits) {
  const auto now = std::chrono::steady_clock::now();
  metrics_.observe(active.generated == 0 ? Histogram::TimeToFirstToken : Histogram::InterTokenLatency,
                   seconds_between(active.generated == 0 ? active.arrival : active.last_token, now));
  active.last_token = now;
  const std::vector<int>& stops = active.request.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
    finish(id, FinishReason::Stop);
    return;
  }
  ++active.generated;
  metrics_.add(Counter::GenerationTokens, 1.0);
  active.pending_tokens.push_back(token);
  if (active.request.top_logprobs >= 0) {
    active.pending_logprobs.push_back(
        token_logprobs(logits, backend_.config().vocab_size, token, active.request.top_logprobs));
  }
  if (active.decoder) active.pending_text += active.decoder->push(token);

  // Stop strings: the held-back tail plus the new text hold every occurrence that ends in the new text.
  size_t cut = std::string::npos;
  for (const std::string& stop : active.request.stop_strings) cut = std::min(cut, active.pending_text.find(stop));
  if (cut != std::string::npos) {
    active.pending_text.resize(cut);
    finish(id, FinishReason::Stop);
    return;
  }
  if (active.generated >= active.max_tokens) {
    finish(id, FinishReason::Length);
    return;
  }
  scheduler_.append_token(id, token);
  const size_t ready = active.pending_text.size() > active.hold_back ? active.pending_text.size() - active.hold_back : 0;
  const size_t send = utf8_safe_prefix(active.pending_text, ready);
  // A request that asked for logprobs gets every token when it is made, also one whose text is empty or
  // still held back (its logprobs ride on an empty delta), so its client sees the first token as soon as
  // it exists rather than when the first printable text follows.
  if (send > 0 || !active.decoder || !active.pending_logprobs.empty()) {
    StreamEvent event;
    event.text = active.pending_text.substr(0, send);
    event.tokens.swap(active.pending_tokens);
    event.logprobs.swap(active.pending_logprobs);
    active.pending_text.erase(0, send);
    active.stream->push(std::move(event));
  }
}

void Engine::finish(uint64_t id, FinishReason reason, const std::string& error) {
  auto it = active_.find(id);
  Active& active = it->second;
  StreamEvent event;
  event.finished = true;
  event.finish_reason = reason;
  event.error = error;
  if (reason != FinishReason::Cancelled) {
    event.text = active.pending_text + (active.decoder ? active.decoder->flush() : "");
    event.tokens = std::move(active.pending_tokens);
    event.logprobs = std::move(active.pending_logprobs);
    event.prompt_logprobs = std::move(active.prompt_logprobs);
  }
  event.prompt_tokens = static_cast<int64_t>(active.request.prompt.size());
  event.completion_tokens = active.generated;
  if (scheduler_.contains(id)) {
    if (std::optional<int> slot = scheduler_.remove(id)) backend_.release(*slot);
  }
  metrics_.add(Counter::Requests, 1.0,
               fmt::format("finish_reason=\"{}\"", error.empty() ? finish_reason_name(reason) : "error"));
  metrics_.observe(Histogram::RequestLatency, seconds_between(active.arrival, std::chrono::steady_clock::now()));
  {
    // Before the final event: a client that sends its next request on receiving it must find room.
    std::lock_guard lock(mutex_);
    --in_flight_;
  }
  active.stream->push(std::move(event));
  active_.erase(it);
}

GenerationStats generate(Engine& engine, EngineRequest request, const std::function<void(const StreamEvent&)>& on_event) {
  GenerationStats stats;
  stats.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  const auto start = std::chrono::steady_clock::now();
  std::optional<std::chrono::steady_clock::time_point> first_token;
  std::shared_ptr<RequestStream> stream = engine.submit(std::move(request));
  if (!stream) fail("generate: the engine's queue is full");
  while (true) {
    engine.run_step();
    StreamEvent event;
    while (stream->next(event, std::chrono::milliseconds(0))) {
      stats.generated_tokens += static_cast<int64_t>(event.tokens.size());
      if (!first_token && !event.tokens.empty()) first_token = std::chrono::steady_clock::now();
      on_event(event);
      if (!event.finished) continue;
      if (!event.error.empty()) fail("generate: {}", event.error);
      const auto end = std::chrono::steady_clock::now();
      stats.prefill_seconds = seconds_between(start, first_token.value_or(end));
      stats.decode_seconds = seconds_between(first_token.value_or(end), end);
      stats.finish_reason = event.finish_reason;
      return stats;
    }
  }
}

void Engine::update_gauges() {
  const BlockManager& blocks = scheduler_.blocks();
  metrics_.set(Gauge::RunningSequences, scheduler_.num_running());
  metrics_.set(Gauge::WaitingSequences, scheduler_.num_waiting());
  metrics_.set(Gauge::KvBlocksUsed, static_cast<double>(blocks.kv_blocks_used()));
  metrics_.set(Gauge::KvCacheUsage,
               blocks.kv_blocks_total() > 0 ? static_cast<double>(blocks.kv_blocks_used()) / blocks.kv_blocks_total() : 0.0);
  metrics_.set(Gauge::StateSlotsUsed, blocks.slots_used());
  metrics_.set(Gauge::StateSlotsUsage, static_cast<double>(blocks.slots_used()) / blocks.slots_total());
  metrics_.set(Gauge::PrefixCacheEntries, static_cast<double>(scheduler_.num_cached_prefixes()));
}

}  // namespace uberlm
