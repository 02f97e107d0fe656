// The continuous-batching scheduler, step by step (table-driven), and the engine loop on a fake
// backend: the scheduler's plain data is checked without a model.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "batch_util.h"
#include "eval/decoding_batch.h"
#include "expect_error.h"
#include "runtime/engine.h"
#include "runtime/scheduler.h"

namespace uberlm {
namespace {

struct ExpectedChunk {
  uint64_t id;
  int64_t first_token, num_tokens;
  bool samples;
  bool operator==(const ExpectedChunk&) const = default;
};

struct Step {
  std::map<uint64_t, int> add;          // id -> prompt length, queued before this step
  std::vector<uint64_t> remove;         // finished before this step
  std::vector<ExpectedChunk> expected;  // the step's chunks, in batch order
  std::vector<uint64_t> preempted;
};

struct Case {
  std::string name;
  SchedulerConfig config;
  std::vector<Step> steps;
};

std::string describe(const std::vector<ExpectedChunk>& chunks) {
  std::string text;
  for (const ExpectedChunk& c : chunks) {
    text += fmt::format("(id {} first {} n {} {}) ", c.id, c.first_token, c.num_tokens, c.samples ? "samples" : "-");
  }
  return text;
}

SchedulerConfig config(int max_seqs, int64_t budget, int64_t max_len, int64_t blocks, int slots) {
  return SchedulerConfig{max_seqs, budget, max_len, blocks, slots};
}

class SchedulerSteps : public ::testing::TestWithParam<Case> {};

TEST_P(SchedulerSteps, ChunksPerStepMatchTheTable) {
  const Case& c = GetParam();
  Scheduler scheduler(c.config);
  for (size_t s = 0; s < c.steps.size(); ++s) {
    const Step& step = c.steps[s];
    for (uint64_t id : step.remove) scheduler.remove(id);
    for (auto [id, length] : step.add) {
      std::vector<int32_t> prompt(length);
      for (int i = 0; i < length; ++i) prompt[i] = static_cast<int32_t>((id * 31 + i * 7) % 101);
      scheduler.add(id, prompt);
    }
    SchedulerOutput out = scheduler.schedule();
    std::vector<ExpectedChunk> got;
    int64_t tokens = 0;
    for (size_t i = 0; i < out.chunks.size(); ++i) {
      const ScheduledChunk& chunk = out.chunks[i];
      got.push_back({chunk.id, chunk.first_token, chunk.num_tokens, chunk.samples});
      EXPECT_EQ(out.batch.chunks[i].num_tokens, chunk.num_tokens);
      EXPECT_EQ(out.batch.chunks[i].logits, chunk.samples ? LogitRows::Last : LogitRows::None);
      EXPECT_EQ(out.batch.chunks[i].start, chunk.first_token);
      tokens += chunk.num_tokens;
    }
    EXPECT_EQ(static_cast<int64_t>(out.batch.tokens.size()), tokens);
    EXPECT_LE(tokens, c.config.max_num_batched_tokens);
    EXPECT_EQ(got, step.expected) << c.name << " step " << s << ": got " << describe(got) << "expected "
                                  << describe(step.expected);
    EXPECT_EQ(out.preempted, step.preempted) << c.name << " step " << s;
    EXPECT_EQ(out.released_slots.size(), out.preempted.size());
    EXPECT_LE(scheduler.num_running(), c.config.max_num_seqs);
    for (const ScheduledChunk& chunk : out.chunks) {
      if (chunk.samples) scheduler.append_token(chunk.id, 5);
    }
  }
}

// Budget 8, prompt 20: prefill in chunks of 8, 8, 4 (the last one samples), then one decode token per step.
// A second sequence arriving mid-prefill takes what budget is left.
const Case kChunkedPrefill{
    "chunked_prefill",
    config(4, 8, 64, 16, 4),
    {
        {{{1, 20}}, {}, {{1, 0, 8, false}}, {}},
        {{{2, 3}}, {}, {{1, 8, 8, false}}, {}},
        {{}, {}, {{1, 16, 4, true}, {2, 0, 3, true}}, {}},
        {{}, {}, {{1, 20, 1, true}, {2, 3, 1, true}}, {}},
        {{}, {1}, {{2, 4, 1, true}}, {}},
    }};

// max_num_seqs 2: the third sequence waits until one finishes.
const Case kMaxNumSeqs{
    "max_num_seqs",
    config(2, 64, 64, 16, 2),
    {
        {{{1, 4}, {2, 4}, {3, 4}}, {}, {{1, 0, 4, true}, {2, 0, 4, true}}, {}},
        {{}, {}, {{1, 4, 1, true}, {2, 4, 1, true}}, {}},
        {{}, {2}, {{1, 5, 1, true}, {3, 0, 4, true}}, {}},
    }};

// 4 KV blocks of 16 tokens (one max_model_len sequence). Two sequences of 30 tokens fit (2 blocks each);
// growing sequence 1 to a 33rd token needs a fifth block, so sequence 2 (the newest) is preempted, then
// recomputed from scratch (prompt + its generated token) once sequence 1 finishes.
const Case kPreemptByRecompute{
    "preempt_by_recompute",
    config(4, 64, 64, 4, 4),
    {
        {{{1, 30}, {2, 30}}, {}, {{1, 0, 30, true}, {2, 0, 30, true}}, {}},
        {{}, {}, {{1, 30, 1, true}, {2, 30, 1, true}}, {}},
        {{}, {}, {{1, 31, 1, true}, {2, 31, 1, true}}, {}},
        {{}, {}, {{1, 32, 1, true}}, {2}},
        {{}, {}, {{1, 33, 1, true}}, {}},
        {{}, {1}, {{2, 0, 33, true}}, {}},
    }};

// A sequence that cannot grow preempts itself when it is the newest; a waiting sequence is not admitted
// in a step that preempted, and later arrivals queue behind a preempted sequence (first come first served).
const Case kSelfPreemption{
    "self_preemption",
    config(4, 64, 32, 2, 4),
    {
        {{{1, 10}, {2, 16}}, {}, {{1, 0, 10, true}, {2, 0, 16, true}}, {}},
        {{{3, 1}}, {}, {{1, 10, 1, true}}, {2}},
        {{}, {}, {{1, 11, 1, true}}, {}},
        {{}, {1}, {{2, 0, 17, true}}, {}},
        {{}, {}, {{2, 17, 1, true}}, {}},
    }};

// Cache slots (one GDN state each) limit admission like max_num_seqs.
const Case kStateSlots{
    "state_slots",
    config(8, 64, 32, 16, 1),
    {
        {{{1, 2}, {2, 2}}, {}, {{1, 0, 2, true}}, {}},
        {{}, {1}, {{2, 0, 2, true}}, {}},
    }};

INSTANTIATE_TEST_SUITE_P(Table, SchedulerSteps,
                         ::testing::Values(kChunkedPrefill, kMaxNumSeqs, kPreemptByRecompute, kSelfPreemption,
                                           kStateSlots),
                         [](const auto& info) { return info.param.name; });

TEST(Scheduler, RejectsBadSequencesAndConfigs) {
  Scheduler scheduler(config(2, 16, 32, 2, 2));
  EXPECT_THROW(scheduler.add(1, {}), Error);
  EXPECT_THROW(scheduler.add(1, std::vector<int32_t>(33, 1)), Error);
  scheduler.add(1, {1, 2});
  EXPECT_THROW(scheduler.add(1, {1}), Error);
  EXPECT_THROW(scheduler.remove(9), Error);
  EXPECT_THROW(Scheduler(config(2, 16, 33, 2, 2)), Error);  // 2 blocks cannot hold 33 tokens
}

TEST(Scheduler, RemovingFreesBlocksAndSlots) {
  Scheduler scheduler(config(2, 64, 32, 4, 2));
  scheduler.add(1, std::vector<int32_t>(20, 3));
  scheduler.add(2, std::vector<int32_t>(5, 3));
  scheduler.schedule();
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 3);
  EXPECT_EQ(scheduler.blocks().slots_used(), 2);
  EXPECT_TRUE(scheduler.remove(1).has_value());
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 1);
  EXPECT_EQ(scheduler.blocks().slots_used(), 1);
  scheduler.add(3, {1});
  EXPECT_FALSE(scheduler.remove(3).has_value());  // still waiting: holds nothing
  EXPECT_TRUE(scheduler.remove(2).has_value());
  EXPECT_FALSE(scheduler.has_work());
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 0);
}

// A backend whose next-token logits are a function of the sequence's whole token history, so any
// scheduling (batching, chunking, preemption and recompute) must reproduce the output of a lone run.
// With a pool it is paged like the CUDA backend: tokens are stored only in the blocks each chunk's
// block table names and the history is read back through the table, so blocks shared by two live
// sequences, or a table that misses a position, change the output.
// A prefix snapshot is the slot's history and length (a dropped one has length -1, so a run continuing
// from it throws).
class FakeBackend : public Backend {
 public:
  FakeBackend(int vocab, int slots, std::optional<KvBlockPool> pool = std::nullopt, int prefix_snapshots = 0)
      : history_(slots), lengths_(slots, 0), pool_(pool), snapshots_(prefix_snapshots, {{}, -1}) {
    config_.vocab_size = vocab;
    if (pool_) stored_.assign(pool_->num_blocks * kKvBlockSize, -1);
  }
  int max_prefix_snapshots() const override { return static_cast<int>(snapshots_.size()); }
  void restore_prefix(int snapshot, int slot) override {
    std::tie(history_.at(slot), lengths_.at(slot)) = snapshots_.at(snapshot);
  }
  void drop_prefix(int snapshot) override { snapshots_.at(snapshot) = {{}, -1}; }
  std::string name() const override { return "fake"; }
  bool reports_fused_decode = false;  // decode steps say they ran fused kernels, as the CUDA backend's may
  const ModelConfig& config() const override { return config_; }
  int max_slots() const override { return static_cast<int>(history_.size()); }
  void release(int slot) override { history_.at(slot).clear(); }
  std::optional<KvBlockPool> kv_block_pool() const override { return pool_; }
  ForwardResult forward(const ForwardBatch& batch) override {
    while (paused.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ForwardResult result;
    result.fused_kernels = reports_fused_decode && batch.tokens.size() == batch.chunks.size();
    size_t offset = 0;
    for (const SequenceChunk& chunk : batch.chunks) {
      auto& history = history_.at(chunk.slot);
      // As the real backends: a run at 0 begins the slot afresh, any other continues where it ended.
      if (chunk.start == 0) history.clear();
      if (chunk.start != 0 && chunk.start != lengths_[chunk.slot]) {
        throw Error(fmt::format("slot {} run starts at {}, the slot holds {}", chunk.slot, chunk.start, lengths_[chunk.slot]));
      }
      const std::vector<int32_t> tokens(batch.tokens.begin() + offset, batch.tokens.begin() + offset + chunk.num_tokens);
      offset += chunk.num_tokens;
      if (pool_) {
        for (int64_t i = 0; i < chunk.num_tokens; ++i) stored_.at(pooled(chunk, chunk.start + i)) = tokens[i];
      } else {
        history.insert(history.end(), tokens.begin(), tokens.end());
      }
      lengths_[chunk.slot] = chunk.start + chunk.num_tokens;
      if (chunk.prefix_save_snapshot >= 0) save_prefix(chunk, history);
      if (chunk.logits == LogitRows::None) continue;
      if (pool_) {
        history.clear();
        for (int64_t p = 0; p < lengths_[chunk.slot]; ++p) history.push_back(stored_.at(pooled(chunk, p)));
      }
      const int next = next_token(history, config_.vocab_size);
      append_one_hot_row(result, batch, config_.vocab_size, next);
    }
    return result;
  }
  // The slot's history up to the run's save point.
  void save_prefix(const SequenceChunk& chunk, const std::vector<int32_t>& history) {
    const int64_t length = chunk.start + chunk.prefix_save_after;
    std::vector<int32_t> saved;
    for (int64_t p = 0; p < length; ++p) saved.push_back(pool_ ? stored_.at(pooled(chunk, p)) : history.at(p));
    snapshots_.at(chunk.prefix_save_snapshot) = {saved, length};
  }
  // Printable ASCII-ish byte tokens (ids 30..120) so the decoded text is plain.
  static int next_token(const std::vector<int32_t>& history, int vocab) {
    uint64_t hash = 1469598103934665603ull;
    for (int32_t t : history) hash = (hash ^ static_cast<uint64_t>(t)) * 1099511628211ull;
    return static_cast<int>(30 + (hash >> 17) % 90) % vocab;
  }
  std::atomic<bool> paused{false};

 private:
  // Index in the pool of position p of the chunk's sequence; throws when the table does not cover p.
  size_t pooled(const SequenceChunk& chunk, int64_t p) const {
    const size_t block = static_cast<size_t>(p / kKvBlockSize);
    if (block >= chunk.block_table.size()) throw Error(fmt::format("slot {} position {}: no block", chunk.slot, p));
    return static_cast<size_t>(chunk.block_table[block]) * kKvBlockSize + p % kKvBlockSize;
  }

  ModelConfig config_;
  std::vector<std::vector<int32_t>> history_;
  std::vector<int64_t> lengths_;
  std::optional<KvBlockPool> pool_;
  std::vector<int32_t> stored_;  // token ids by pool position
  std::vector<std::pair<std::vector<int32_t>, int64_t>> snapshots_;
};

std::unique_ptr<BpeTokenizer> fixture_tokenizer() {
  const auto path = std::filesystem::path(UBERLM_FIXTURE_DIR) / "tokenizer" / "qwen" / "tokenizer.json";
  if (!std::filesystem::exists(path)) throw Error("missing fixture " + path.string());
  return BpeTokenizer::load(path);
}

EngineConfig engine_config(int max_seqs, int64_t budget, int64_t blocks, int max_waiting, int prefix_snapshots = 0) {
  SchedulerConfig scheduler = config(max_seqs, budget, 128, blocks, max_seqs);
  scheduler.prefix_snapshots = prefix_snapshots;
  return EngineConfig{scheduler, max_waiting};
}

struct Collected {
  std::string text;
  StreamEvent final;
};

Collected collect(RequestStream& stream) {
  Collected out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  StreamEvent event;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!stream.next(event, std::chrono::milliseconds(100))) continue;
    out.text += event.text;
    if (event.finished) {
      out.final = event;
      return out;
    }
  }
  throw Error("engine test: no final event within 20 s");
}

EngineRequest request_for(int index, int64_t max_tokens) {
  EngineRequest request;
  for (int i = 0; i < 5 + index * 7 % 40; ++i) request.prompt.push_back(30 + (index * 13 + i * 3) % 90);
  request.max_tokens = max_tokens;
  return request;
}

// Request `index` with logit_bias and penalties, which make each pick depend on the sequence's own token
// counts: even ones greedy with frequency and presence penalties (a repeated token drops below the
// others), odd ones sampled from a seed with a repetition penalty and min-p: at temperature 0.8 a 0 logit
// is e^(-1/0.8) = 0.29 of the one-hot token's 1 (below min_p 0.3: it stays alone), but e^(-(1/1.5)/0.8) =
// 0.43 of a repeated token's 1/1.5, so after a repeat the top 5 are drawn from.
EngineRequest penalised_request_for(int index, int64_t max_tokens) {
  EngineRequest request = request_for(index, max_tokens);
  request.sampling = index % 2 == 0
                         ? SamplingParams{.presence_penalty = 0.25f, .frequency_penalty = 1.5f,
                                          .logit_bias = {{40 + index, 0.5f}}}
                         : SamplingParams{.temperature = 0.8f, .top_k = 5, .seed = static_cast<uint64_t>(index),
                                          .min_p = 0.3f, .repetition_penalty = 1.5f};
  return request;
}

// Requests whose prompts share prefixes: one of 16, 33 or 50 common tokens (a block boundary, one past
// it, and mid-block), then a few of their own; every fourth repeats an earlier prompt exactly.
EngineRequest shared_prefix_request_for(int index, int64_t max_tokens) {
  if (index % 4 == 3) return shared_prefix_request_for(index - 2, max_tokens);
  EngineRequest request;
  const int common = std::array{16, 33, 50}[index % 3];
  for (int i = 0; i < common; ++i) request.prompt.push_back(30 + (i * 7 + index % 3) % 90);
  for (int i = 0; i < 1 + index % 5; ++i) request.prompt.push_back(30 + (index * 11 + i * 5) % 90);
  request.max_tokens = max_tokens;
  return request;
}

using RequestMaker = EngineRequest (*)(int index, int64_t max_tokens);

// The text of each of `requests` requests (40 tokens) run alone on a one-slot backend.
std::vector<std::string> lone_run_texts(const BpeTokenizer& tokenizer, int requests, RequestMaker make = request_for) {
  FakeBackend backend(tokenizer.vocab_size(), 1);
  Metrics metrics;
  Engine engine(backend, &tokenizer, engine_config(1, 512, 8, 0), metrics);
  std::vector<std::string> texts;
  for (int r = 0; r < requests; ++r) {
    Collected got = collect(*engine.submit(make(r, 40)));
    EXPECT_EQ(got.final.finish_reason, FinishReason::Length) << "request " << r;
    EXPECT_EQ(got.final.completion_tokens, 40) << "request " << r;
    texts.push_back(got.text);
  }
  return texts;
}

// Submits requests 0..alone.size()-1 (40 tokens each) at once and expects each output to equal its lone
// run, with no error.
void expect_lone_run_outputs(Engine& engine, RequestMaker make, const std::vector<std::string>& alone) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t r = 0; r < alone.size(); ++r) streams.push_back(engine.submit(make(static_cast<int>(r), 40)));
  for (size_t r = 0; r < alone.size(); ++r) {
    ASSERT_NE(streams[r], nullptr);
    const Collected got = collect(*streams[r]);
    EXPECT_TRUE(got.final.error.empty()) << "request " << r << ": " << got.final.error;
    EXPECT_EQ(got.text, alone[r]) << "request " << r;
  }
}

TEST(Engine, BatchedChunkedAndPreemptedOutputsEqualLoneRuns) {
  auto tokenizer = fixture_tokenizer();
  constexpr int kRequests = 12;
  const std::vector<std::string> alone = lone_run_texts(*tokenizer, kRequests);
  ASSERT_FALSE(::testing::Test::HasFailure()) << "the lone runs must finish by length";
  // 4 sequences, 8 tokens a step, 8 blocks of 16 for up to 4 x 85 tokens: chunked prefill and preemption.
  FakeBackend backend(tokenizer->vocab_size(), 4);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(4, 8, 8, kRequests), metrics);
  expect_lone_run_outputs(engine, request_for, alone);
  EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
  EXPECT_GT(metrics.value(Counter::EngineSteps, R"(backend="fake",path="mixed")"), 0.0);
  EXPECT_EQ(metrics.value(Counter::GenerationTokens), kRequests * 40.0);
  EXPECT_EQ(engine.in_flight(), 0);
}

// Penalties count each sequence's own tokens: batched, chunked, preempted and recomputed, every output
// still equals its lone run, and the penalties did change the outputs.
TEST(Engine, PenalisedOutputsEqualLoneRunsUnderBatchingAndPreemption) {
  auto tokenizer = fixture_tokenizer();
  constexpr int kRequests = 12;
  const std::vector<std::string> plain = lone_run_texts(*tokenizer, kRequests);
  const std::vector<std::string> alone = lone_run_texts(*tokenizer, kRequests, penalised_request_for);
  for (int r = 0; r < kRequests; ++r) EXPECT_NE(alone[r], plain[r]) << "request " << r;
  FakeBackend backend(tokenizer->vocab_size(), 4);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(4, 8, 8, kRequests), metrics);
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int r = kRequests - 1; r >= 0; --r) streams.push_back(engine.submit(penalised_request_for(r, 40)));
  for (int r = 0; r < kRequests; ++r) {
    ASSERT_NE(streams[r], nullptr);
    EXPECT_EQ(collect(*streams[r]).text, alone[kRequests - 1 - r]) << "request " << kRequests - 1 - r;
  }
  EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
}

// The same traffic on a paged backend: every chunk's block table is what the backend stores and reads
// through, under chunked prefill and preemption, and the outputs still equal the lone runs.
TEST(Engine, PagedBackendReadsThroughTheSchedulersBlockTables) {
  auto tokenizer = fixture_tokenizer();
  constexpr int kRequests = 12;
  const std::vector<std::string> alone = lone_run_texts(*tokenizer, kRequests);
  FakeBackend backend(tokenizer->vocab_size(), 4, KvBlockPool{8});
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(4, 8, 8, kRequests), metrics);
  expect_lone_run_outputs(engine, request_for, alone);
  EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
}

// Prefix caching on both kinds of fake backend, with few snapshots (evictions) and a small pool
// (preemptions): sequences start from cached prefixes, and every output equals its lone run.
struct PrefixCachingCase {
  std::string name;
  bool paged;
  int prefix_snapshots;
  int64_t blocks;
};

class EnginePrefixCaching : public ::testing::TestWithParam<PrefixCachingCase> {};

TEST_P(EnginePrefixCaching, HitsGiveTheLoneRunsOutputs) {
  const PrefixCachingCase& c = GetParam();
  auto tokenizer = fixture_tokenizer();
  constexpr int kRequests = 16;
  const std::vector<std::string> alone = lone_run_texts(*tokenizer, kRequests, shared_prefix_request_for);
  FakeBackend backend(tokenizer->vocab_size(), 4, c.paged ? std::optional(KvBlockPool{c.blocks}) : std::nullopt,
                      c.prefix_snapshots);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(4, 24, c.blocks, kRequests, c.prefix_snapshots), metrics);
  expect_lone_run_outputs(engine, shared_prefix_request_for, alone);
  EXPECT_GT(metrics.value(Counter::PrefixCacheHitTokens), 0.0);
  EXPECT_GT(metrics.value(Counter::PrefixCacheQueriedTokens), metrics.value(Counter::PrefixCacheHitTokens));
  EXPECT_LE(metrics.value(Gauge::PrefixCacheEntries), c.prefix_snapshots);
  if (c.blocks < 24) EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
}

INSTANTIATE_TEST_SUITE_P(Backends, EnginePrefixCaching,
                         ::testing::Values(PrefixCachingCase{"host_caches", false, 8, 64},
                                           PrefixCachingCase{"paged", true, 8, 64},
                                           PrefixCachingCase{"paged_two_snapshots", true, 2, 64},
                                           PrefixCachingCase{"paged_small_pool", true, 8, 12}),
                         [](const auto& info) { return info.param.name; });

// The index alone: the longest entry that leaves a token to compute wins, lookups refresh an entry,
// the least recently used goes first, an entry of the same tokens is handed back, and one of other
// tokens with the same length is no match.
TEST(PrefixCache, LongestPrefixLeastRecentFirstAndExactTokens) {
  const auto tokens = [](int length, int32_t first) {
    std::vector<int32_t> out(length);
    for (int i = 0; i < length; ++i) out[i] = first + i;
    return out;
  };
  PrefixCache cache(3);
  const auto entry = [&](int length, int32_t first) {
    return PrefixEntry{tokens(length, first), {}, *cache.take_snapshot()};
  };
  EXPECT_FALSE(cache.insert(entry(16, 0)).has_value());
  EXPECT_FALSE(cache.insert(entry(32, 0)).has_value());
  EXPECT_FALSE(cache.insert(entry(16, 1000)).has_value());
  EXPECT_FALSE(cache.take_snapshot().has_value());
  const std::vector<int32_t> prompt = tokens(40, 0);
  ASSERT_NE(cache.longest_prefix(prompt, 39), nullptr);
  EXPECT_EQ(cache.longest_prefix(prompt, 39)->tokens.size(), 32u);
  EXPECT_EQ(cache.longest_prefix(prompt, 31)->tokens.size(), 16u);  // 32 would leave no token to compute
  EXPECT_EQ(cache.longest_prefix(tokens(40, 1), 39), nullptr);     // same lengths, other tokens
  EXPECT_TRUE(cache.contains(prompt, 32));
  EXPECT_FALSE(cache.contains(tokens(32, 5), 32));
  // Use order now (most recent first): 16 of 0, 32 of 0, 16 of 1000.
  std::optional<PrefixEntry> first_out = cache.evict_least_recent();
  ASSERT_TRUE(first_out.has_value());
  EXPECT_EQ(first_out->tokens, tokens(16, 1000));
  cache.give_back_snapshot(first_out->snapshot);
  std::optional<PrefixEntry> duplicate = cache.insert(entry(32, 0));
  ASSERT_TRUE(duplicate.has_value());
  cache.give_back_snapshot(duplicate->snapshot);
  EXPECT_EQ(cache.evict_least_recent()->tokens, tokens(32, 0));
  EXPECT_EQ(cache.evict_least_recent()->tokens, tokens(16, 0));
  EXPECT_FALSE(cache.evict_least_recent().has_value());
  EXPECT_EQ(cache.size(), 0);
}

// The scheduler's side: a prompt's prefill runs whole and asks for its prefix to be saved inside the run at
// its save point, the saved prefix's blocks outlive the sequence, a later prompt with that prefix starts
// after it on the same blocks, and a cached prefix is evicted (its snapshot dropped) before a running
// sequence would be preempted.
TEST(Scheduler, CachedPrefixIsSavedSharedAndEvictedFirst) {
  SchedulerConfig c = config(2, 64, 96, 6, 2);
  c.prefix_snapshots = 2;
  Scheduler scheduler(c);
  std::vector<int32_t> prompt(40);
  for (int i = 0; i < 40; ++i) prompt[i] = 100 + i;
  scheduler.add(1, prompt);
  SchedulerOutput first = scheduler.schedule();
  ASSERT_EQ(first.chunks.size(), 1u);
  EXPECT_EQ(first.chunks[0].num_tokens, 40);
  EXPECT_TRUE(first.chunks[0].samples);
  const SequenceChunk& run = first.batch.chunks[0];
  ASSERT_GE(run.prefix_save_snapshot, 0);
  EXPECT_EQ(run.prefix_save_after, 32);  // the save point: the last block boundary before token 39
  const int snapshot = run.prefix_save_snapshot;
  const std::vector<int32_t> shared_blocks(run.block_table.begin(), run.block_table.begin() + 2);
  EXPECT_EQ(scheduler.num_cached_prefixes(), 0);  // until the forward has run
  scheduler.confirm_prefix_saves();
  scheduler.remove(1);
  EXPECT_EQ(scheduler.num_cached_prefixes(), 1);
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 2);  // the entry's two blocks

  std::vector<int32_t> longer = prompt;
  longer.insert(longer.end(), {7, 8, 9});
  scheduler.add(2, longer);
  SchedulerOutput hit = scheduler.schedule();
  ASSERT_EQ(hit.chunks.size(), 1u);
  EXPECT_EQ(hit.chunks[0].first_token, 32);
  EXPECT_EQ(hit.chunks[0].num_tokens, 11);
  EXPECT_EQ(hit.prefix_hit_tokens, 32);
  EXPECT_EQ(hit.prefix_queried_tokens, 43);
  ASSERT_EQ(hit.prefix_restores.size(), 1u);
  EXPECT_EQ(hit.prefix_restores[0].snapshot, snapshot);
  EXPECT_EQ(hit.prefix_restores[0].slot, hit.batch.chunks[0].slot);
  const std::vector<int32_t>& table = hit.batch.chunks[0].block_table;
  ASSERT_GE(table.size(), 3u);
  EXPECT_EQ(std::vector<int32_t>(table.begin(), table.begin() + 2), shared_blocks);
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 3);  // two shared, one of its own

  scheduler.remove(2);
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 2);  // the entry's

  // 80 tokens of other content: 64 first (four blocks, the rest of the pool) with their prefix saved,
  // then 16 that need a fifth block: the older cached prefix is evicted for it, nothing is preempted.
  scheduler.add(3, std::vector<int32_t>(80, 5));
  SchedulerOutput own = scheduler.schedule();
  ASSERT_EQ(own.chunks.size(), 1u);
  EXPECT_EQ(own.chunks[0].num_tokens, 64);  // the step's budget; the save point is its last token
  EXPECT_GE(own.batch.chunks[0].prefix_save_snapshot, 0);
  EXPECT_EQ(own.batch.chunks[0].prefix_save_after, 64);
  EXPECT_TRUE(own.dropped_snapshots.empty());
  SchedulerOutput evicting = scheduler.schedule();
  ASSERT_EQ(evicting.chunks.size(), 1u);
  EXPECT_TRUE(evicting.chunks[0].samples);
  EXPECT_TRUE(evicting.preempted.empty());
  EXPECT_EQ(evicting.dropped_snapshots, std::vector<int>{snapshot});
  EXPECT_EQ(scheduler.num_cached_prefixes(), 1);  // sequence 3's
  scheduler.remove(3);
  EXPECT_EQ(scheduler.blocks().kv_blocks_used(), 4);  // sequence 3's prefix
}

// `bench` and `tune` drive the engine into a state where every sequence decodes. With a step budget of 12 tokens
// and 8 sequences of 64-token prompts, the first admitted sequence decodes for over a hundred steps while the
// others prefill (4 prompt tokens a step at worst); setup_tokens leaves it room for all of them (a fixed 64
// tokens did not: it finished early and the timed steps decoded 7), so every timed step decodes all 8.
TEST(Engine, DecodingBatchReachesAFullDecodeWithASmallStepBudget) {
  constexpr int kBatch = 8, kContext = 64, kSteps = 4;
  constexpr int64_t kBudget = 12;
  const int setup = setup_tokens(kBatch, kContext, kBudget);
  FakeBackend backend(512, kBatch);
  Metrics metrics;
  EngineConfig config = engine_config(kBatch, kBudget, 128, kBatch);
  config.scheduler.max_model_len = kContext + setup + kWarmSteps + kSteps;
  config.loop_thread = false;
  Engine engine(backend, nullptr, config, metrics);
  DecodingBatch sequences(engine, kBatch, kContext, setup + kWarmSteps + kSteps, 512);
  for (int step = 0; step < kSteps; ++step) EXPECT_TRUE(sequences.is_full_decode(engine.run_step())) << "step " << step;
  EXPECT_THROW(setup_tokens(kBatch, kContext, kBatch), Error);
}

TEST(Engine, RefusesASchedulerPoolLargerThanTheBackends) {
  auto tokenizer = fixture_tokenizer();
  FakeBackend backend(tokenizer->vocab_size(), 2, KvBlockPool{7});
  Metrics metrics;
  expect_error_containing([&] { Engine engine(backend, tokenizer.get(), engine_config(2, 64, 8, 0), metrics); },
                          {"backend fake has a pool of 7"});
}

// A backend that reports its decode steps as fused (the CUDA backend's --decode-path): the engine counts them in
// /metrics by backend, apart from the fallbacks.
TEST(Engine, CountsFusedDecodeStepsInMetrics) {
  auto tokenizer = fixture_tokenizer();
  FakeBackend backend(tokenizer->vocab_size(), 2);
  backend.reports_fused_decode = true;
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(2, 64, 16, 4), metrics);
  collect(*engine.submit(request_for(3, 12)));
  const double decode_steps = metrics.value(Counter::EngineSteps, R"(backend="fake",path="decode")");
  EXPECT_GT(decode_steps, 0);
  EXPECT_EQ(metrics.value(Counter::FusedDecodeSteps, R"(backend="fake")"), decode_steps);
  EXPECT_EQ(metrics.value(Counter::FusedDecodeFallbackSteps, R"(backend="fake")"), 0);
  EXPECT_NE(metrics.render().find(R"(uberlm_fused_decode_steps_total{backend="fake"})"), std::string::npos);
}

TEST(Engine, StopStringsAndStopTokensEndTheOutput) {
  auto tokenizer = fixture_tokenizer();
  FakeBackend backend(tokenizer->vocab_size(), 2);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(2, 64, 16, 4), metrics);
  const std::string full = collect(*engine.submit(request_for(3, 60))).text;
  ASSERT_GE(full.size(), 40u);
  // A stop string from the middle of the output: the text ends right before its first occurrence.
  const std::string stop = full.substr(20, 3);
  EngineRequest with_stop = request_for(3, 60);
  with_stop.stop_strings = {"never in the output \x01", stop};
  Collected stopped = collect(*engine.submit(with_stop));
  EXPECT_EQ(stopped.text, full.substr(0, full.find(stop)));
  EXPECT_EQ(stopped.final.finish_reason, FinishReason::Stop);
  // A stop token: the output ends before it, and the token is not counted.
  EngineRequest prompt_only = request_for(3, 1);
  std::vector<int32_t> history = prompt_only.prompt;
  const int first = FakeBackend::next_token(history, tokenizer->vocab_size());
  history.push_back(first);
  EngineRequest with_stop_token = request_for(3, 60);
  with_stop_token.stop_token_ids = {FakeBackend::next_token(history, tokenizer->vocab_size())};
  Collected token_stopped = collect(*engine.submit(with_stop_token));
  EXPECT_EQ(token_stopped.final.finish_reason, FinishReason::Stop);
  EXPECT_EQ(token_stopped.final.completion_tokens, 1);
  EXPECT_EQ(token_stopped.text, tokenizer->decode({first}));
}

TEST(Engine, CancelFreesTheSequenceAndAFullQueueRefuses) {
  auto tokenizer = fixture_tokenizer();
  FakeBackend backend(tokenizer->vocab_size(), 1);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(1, 64, 8, 1), metrics);
  backend.paused = true;
  auto first = engine.submit(request_for(1, 100));
  auto second = engine.submit(request_for(2, 100));
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(engine.submit(request_for(3, 100)), nullptr);  // 1 running + 1 waiting
  engine.cancel(first->id());
  engine.cancel(second->id());
  backend.paused = false;
  EXPECT_EQ(collect(*first).final.finish_reason, FinishReason::Cancelled);
  EXPECT_EQ(collect(*second).final.finish_reason, FinishReason::Cancelled);
  EXPECT_EQ(engine.in_flight(), 0);
  auto third = engine.submit(request_for(3, 5));
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(collect(*third).final.finish_reason, FinishReason::Length);
  EXPECT_EQ(metrics.value(Counter::Requests, R"(finish_reason="cancelled")"), 2.0);
}

// Each generated token comes with its logprob under the fake's one-hot logits (1 for the next token, 0
// elsewhere): log(e / (e + V - 1)), and the next most likely is the lowest other id at log(1 / (e + V - 1)).
// With logprobs asked, each token is its own event when it is made, although a stop string holds its
// text back (a streaming client's first token must not wait for printable text).
TEST(Engine, EventsCarryEachTokensLogprobs) {
  auto tokenizer = fixture_tokenizer();
  const int vocab = tokenizer->vocab_size();
  FakeBackend backend(vocab, 1);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(1, 64, 8, 1), metrics);
  EngineRequest request = request_for(5, 12);
  request.top_logprobs = 2;
  request.stop_strings = {"\x01 not in the output"};
  auto stream = engine.submit(request);
  ASSERT_NE(stream, nullptr);
  const double normaliser = std::log(std::exp(1.0) + (vocab - 1));
  int64_t tokens = 0;
  StreamEvent event;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!event.finished && std::chrono::steady_clock::now() < deadline) {
    if (!stream->next(event, std::chrono::milliseconds(100))) continue;
    ASSERT_EQ(event.logprobs.size(), event.tokens.size());
    EXPECT_EQ(event.tokens.size(), 1u) << "after " << tokens << " tokens";
    for (size_t i = 0; i < event.tokens.size(); ++i) {
      const TokenLogprobs& got = event.logprobs[i];
      EXPECT_EQ(got.token, event.tokens[i]);
      EXPECT_NEAR(got.logprob, 1.0 - normaliser, 1e-12);
      ASSERT_EQ(got.top.size(), 2u);
      EXPECT_EQ(got.top[0], std::make_pair(event.tokens[i], got.logprob));
      EXPECT_EQ(got.top[1].first, event.tokens[i] == 0 ? 1 : 0);
      EXPECT_NEAR(got.top[1].second, -normaliser, 1e-12);
    }
    tokens += static_cast<int64_t>(event.tokens.size());
  }
  ASSERT_TRUE(event.finished);
  EXPECT_EQ(tokens, 12);
  request.top_logprobs = 21;
  expect_error_containing([&] { engine.submit(request); }, {"top_logprobs must be in [0, 20], got 21"});
}

TEST(Engine, RejectsRequestsItCannotServe) {
  auto tokenizer = fixture_tokenizer();
  FakeBackend backend(tokenizer->vocab_size(), 1);
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), engine_config(1, 64, 8, 1), metrics);
  EXPECT_THROW(engine.submit(EngineRequest{}), Error);
  EXPECT_THROW(engine.submit(request_for(1, 128)), Error);  // prompt + max_tokens > max_model_len 128
  EngineRequest bad_token = request_for(1, 4);
  bad_token.prompt[0] = tokenizer->vocab_size();
  EXPECT_THROW(engine.submit(bad_token), Error);
  EngineRequest bad_sampling = request_for(1, 4);
  bad_sampling.sampling.top_p = 0.0f;
  EXPECT_THROW(engine.submit(bad_sampling), Error);
  EngineRequest bad_bias = request_for(1, 4);
  bad_bias.sampling.logit_bias = {{tokenizer->vocab_size(), 1.0f}};
  try {
    engine.submit(bad_bias);
    ADD_FAILURE() << "a logit_bias id outside the vocabulary was accepted";
  } catch (const RequestError& error) {
    EXPECT_EQ(error.field, "logit_bias");
    EXPECT_NE(std::string(error.what()).find("outside the vocabulary"), std::string::npos) << error.what();
  }
}

}  // namespace
}  // namespace uberlm
