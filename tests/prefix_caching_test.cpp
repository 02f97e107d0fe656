// Prefix caching on the reference backend with the default model (a Qwen3.5 hybrid: the Gated DeltaNet
// states come from snapshots, the attention keys and values from the cached copy): every request's
// tokens and logprobs equal its run alone without the cache, bit for bit, while prompts that share
// prefixes hit, cached prefixes are evicted (two snapshots for many prefixes) and sequences are
// preempted (a KV pool of 11 blocks, one more than a sequence of max_model_len needs); also on the
// tensor-parallel CPU backend (every rank's caches snapshotted).
#include <gtest/gtest.h>

#include <array>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine_run.h"
#include "model/model.h"
#include "runtime/cpu_backend.h"
#include "runtime/cpu_tensor_parallel_backend.h"
#include "runtime/engine.h"

namespace uberlm {
namespace {

constexpr int kRequests = 12;
constexpr int64_t kMaxModelLen = 160;

const Model& default_model() {
  static const std::unique_ptr<Model> model = Model::load(std::filesystem::path(UBERLM_SOURCE_DIR) / "models" / "default");
  return *model;
}

// Prompts of 20, 40 or 70 common tokens (mid-block, a block boundary plus eight, and past four blocks)
// and a few of their own; every fourth repeats an earlier one. Even requests are greedy, odd ones
// sampled from their own seed; all report logprobs with two alternatives.
EngineRequest request_for(int index) {
  if (index % 4 == 3) return request_for(index - 2);
  EngineRequest request;
  const int common = std::array{20, 40, 70}[index % 3];
  for (int i = 0; i < common; ++i) request.prompt.push_back(200 + (i * 37 + index % 3) % 3000);
  for (int i = 0; i < 1 + index % 6; ++i) request.prompt.push_back(300 + (index * 101 + i * 7) % 3000);
  request.max_tokens = 24;
  if (index % 2 == 1) request.sampling = SamplingParams{.temperature = 0.9f, .seed = static_cast<uint64_t>(index)};
  request.top_logprobs = 2;
  return request;
}

struct Output {
  std::vector<int32_t> tokens;
  std::vector<double> logprobs;  // each token's, then its alternatives'
  bool operator==(const Output&) const = default;
};

EngineConfig engine_config(int max_num_seqs, int64_t kv_blocks, int prefix_snapshots) {
  EngineConfig config;
  config.scheduler = SchedulerConfig{.max_num_seqs = max_num_seqs,
                                     .max_num_batched_tokens = 48,
                                     .max_model_len = kMaxModelLen,
                                     .num_kv_blocks = kv_blocks,
                                     .num_slots = max_num_seqs,
                                     .prefix_snapshots = prefix_snapshots};
  config.max_waiting = kRequests;
  config.loop_thread = false;
  return config;
}

// Submits `requests` at once and steps the engine until they are all finished.
std::vector<Output> run_requests(Engine& engine, const std::vector<EngineRequest>& requests) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (const EngineRequest& request : requests) streams.push_back(engine.submit(request));
  const std::vector<std::vector<StreamEvent>> events = step_until_done(engine, streams);
  std::vector<Output> outputs(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    for (const StreamEvent& event : events[i]) {
      outputs[i].tokens.insert(outputs[i].tokens.end(), event.tokens.begin(), event.tokens.end());
      for (const TokenLogprobs& logprobs : event.logprobs) {
        outputs[i].logprobs.push_back(logprobs.logprob);
        for (const auto& [id, logprob] : logprobs.top) outputs[i].logprobs.push_back(logprob);
      }
    }
  }
  return outputs;
}

// Requests [first, last) of request_for at once.
std::vector<Output> run(Engine& engine, int first, int last) {
  std::vector<EngineRequest> requests;
  for (int r = first; r < last; ++r) requests.push_back(request_for(r));
  return run_requests(engine, requests);
}

// The CPU backend, or its tensor-parallel form over `ranks` rank threads.
std::unique_ptr<Backend> cpu_backend(int ranks, int slots, int prefix_snapshots) {
  if (ranks == 1) return std::make_unique<CpuBackend>(default_model(), slots, prefix_snapshots);
  return std::make_unique<CpuTensorParallelBackend>(default_model(), slots, ranks, prefix_snapshots);
}

std::vector<Output> lone_runs(int ranks) {
  const std::unique_ptr<Backend> backend = cpu_backend(ranks, 1, 0);
  Metrics metrics;
  Engine engine(*backend, nullptr, engine_config(1, kMaxModelLen / 16, 0), metrics);
  std::vector<Output> outputs;
  for (int r = 0; r < kRequests; ++r) outputs.push_back(run(engine, r, r + 1)[0]);
  return outputs;
}

struct CachingCase {
  std::string name;
  int prefix_snapshots;
  int64_t kv_blocks;
  int ranks = 1;
};

class PrefixCaching : public ::testing::TestWithParam<CachingCase> {};

TEST_P(PrefixCaching, OutputsEqualLoneRunsWithoutTheCache) {
  const CachingCase& c = GetParam();
  const std::vector<Output> alone = lone_runs(c.ranks);
  const std::unique_ptr<Backend> backend = cpu_backend(c.ranks, 4, c.prefix_snapshots);
  Metrics metrics;
  Engine engine(*backend, nullptr, engine_config(4, c.kv_blocks, c.prefix_snapshots), metrics);
  // In two waves, so the second finds the first's prefixes cached.
  std::vector<Output> cached = run(engine, 0, kRequests / 2);
  const std::vector<Output> second = run(engine, kRequests / 2, kRequests);
  cached.insert(cached.end(), second.begin(), second.end());
  for (int r = 0; r < kRequests; ++r) {
    EXPECT_EQ(cached[r].tokens.size(), 24u) << "request " << r;
    EXPECT_TRUE(cached[r] == alone[r]) << "request " << r;
  }
  EXPECT_GT(metrics.value(Counter::PrefixCacheHitTokens), 0.0);
  if (c.kv_blocks < 20) EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
}

// A second turn: its prompt is the first request's prompt and output and a few tokens more. The first
// request's caches at the last block boundary it reached while decoding (48 of its 30 + 24 tokens) are
// cached when it finishes, so the second turn starts there, and its output equals its lone run.
TEST(PrefixCachingTurns, NextTurnStartsAfterThePreviousReply) {
  CpuBackend backend(default_model(), 2, 4);
  Metrics metrics;
  Engine engine(backend, nullptr, engine_config(2, 4 * kMaxModelLen / 16, 4), metrics);
  EngineRequest first;
  for (int i = 0; i < 30; ++i) first.prompt.push_back(500 + i * 13 % 2000);
  first.max_tokens = 24;
  const std::vector<int32_t> reply = run_requests(engine, {first})[0].tokens;
  ASSERT_EQ(reply.size(), 24u);
  EngineRequest second;
  second.prompt = first.prompt;
  second.prompt.insert(second.prompt.end(), reply.begin(), reply.end());
  second.prompt.insert(second.prompt.end(), {700, 701, 702});
  second.max_tokens = 16;
  second.top_logprobs = 2;
  const double hits_before = metrics.value(Counter::PrefixCacheHitTokens);
  const Output cached = run_requests(engine, {second})[0];
  EXPECT_EQ(metrics.value(Counter::PrefixCacheHitTokens) - hits_before, 48.0);

  CpuBackend lone_backend(default_model(), 1);
  Metrics lone_metrics;
  Engine lone(lone_backend, nullptr, engine_config(1, kMaxModelLen / 16, 0), lone_metrics);
  const Output alone = run_requests(lone, {second})[0];
  EXPECT_EQ(cached.tokens.size(), 16u);
  EXPECT_TRUE(cached == alone);
}

INSTANTIATE_TEST_SUITE_P(DefaultModel, PrefixCaching,
                         ::testing::Values(CachingCase{"roomy", 16, 4 * kMaxModelLen / 16},
                                           CachingCase{"two_snapshots_small_pool", 2, 11},
                                           CachingCase{"tensor_parallel_2", 16, 4 * kMaxModelLen / 16, 2}),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace uberlm
