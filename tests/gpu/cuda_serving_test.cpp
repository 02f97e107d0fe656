// The CUDA backend under the server's engine: KV blocks owned by the scheduler (scrambled block tables give
// the same logits, bit for bit, as contiguous ones), bad block tables are errors, the pool sized from a
// memory fraction, and the Engine loop on the CUDA backend finishing every request through
// preemption. Paths: $UBERLM_DEFAULT_MODEL (else models/default) and $UBERLM_FIXTURE_DIR.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "../expect_error.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/cuda_backend.h"
#include "runtime/engine.h"
#include "tokenizer/bpe_tokenizer.h"
#include "backend_test_util.h"
#include "gpu_test_util.h"

namespace uberlm {
namespace {

using gpu_test::default_model;
using gpu_test::random_tokens;
using gpu_test::require_gpu;

CudaBackendOptions serving_options(int slots, int64_t blocks) {
  CudaBackendOptions options = gpu_test::small_backend_options(slots, 256);
  options.num_kv_blocks = blocks;
  return options;
}

// Hands out blocks of a shuffled pool, so that each slot's table is scattered and interleaved with the others'.
class ScrambledTables {
 public:
  ScrambledTables(int64_t blocks, int slots, std::mt19937& rng) : tables_(slots), free_(blocks) {
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), rng);
  }
  std::vector<int32_t> grow(int slot, int64_t tokens) {
    std::vector<int32_t>& table = tables_.at(slot);
    while (static_cast<int64_t>(table.size()) * kKvBlockSize < tokens) {
      table.push_back(free_.back());
      free_.pop_back();
    }
    return table;
  }
  void release(int slot) {
    free_.insert(free_.begin(), tables_.at(slot).begin(), tables_.at(slot).end());
    tables_.at(slot).clear();
  }

 private:
  std::vector<std::vector<int32_t>> tables_;
  std::vector<int32_t> free_;
};

TEST(CudaServing, ScrambledBlockTablesGiveTheLogitsOfContiguousOnes) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  const int vocab = model->config.vocab_size;
  const CudaBackendOptions options = serving_options(3, 64);
  CudaBackend contiguous(*model, options), scrambled(*model, options);
  ASSERT_EQ(scrambled.kv_block_pool()->num_blocks, 64);
  gpu_test::TestSequences sequences(3, options.max_context);
  std::mt19937 rng(std::random_device{}());
  ScrambledTables tables(64, 3, rng);

  // Prefill (one chunk over 16 tokens spans blocks), then decode steps across block boundaries, a slot
  // restarting on other blocks, then more decode.
  std::vector<std::vector<int64_t>> steps = {{13, 40, 1}};
  for (int s = 0; s < 30; ++s) steps.push_back({1, s == 12 ? 21 : 1, 1});
  int64_t compared = 0;
  for (size_t s = 0; s < steps.size(); ++s) {
    ForwardBatch batch;
    ForwardBatch paged;
    if (s == 13) {
      sequences.restart(1);
      tables.release(1);
    }
    int64_t total = 0;
    for (int slot = 0; slot < 3; ++slot) {
      const int64_t n = steps[s][slot];
      batch.chunks.push_back(sequences.run(slot, n));
      SequenceChunk scattered = batch.chunks.back();
      scattered.block_table = tables.grow(slot, scattered.start + n);
      paged.chunks.push_back(scattered);
      total += n;
    }
    batch.tokens = paged.tokens = random_tokens(rng, total, vocab);
    const ForwardResult a = contiguous.forward(batch);
    const ForwardResult b = scrambled.forward(paged);
    ASSERT_EQ(a.rows, b.rows);
    ASSERT_EQ(a.logits.size(), b.logits.size());
    for (size_t i = 0; i < a.logits.size(); ++i) {
      ASSERT_EQ(a.logits[i], b.logits[i]) << "step " << s << " logit " << i;
    }
    compared += a.rows;
  }
  EXPECT_EQ(compared, 3 * static_cast<int64_t>(steps.size()));
  EXPECT_GT(scrambled.counters().graph_replays, 0);
}

TEST(CudaServing, BadBlockTablesAreErrors) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  CudaBackend given(*model, serving_options(2, 32));
  auto run = [](int slot, int64_t start, int64_t tokens, std::vector<int32_t> table) {
    return SequenceChunk{.slot = slot, .start = start, .num_tokens = tokens, .logits = LogitRows::Last,
                         .block_table = std::move(table)};
  };
  expect_error_containing([&] { given.forward(ForwardBatch{{1, 2, 3}, {run(0, 0, 3, {})}}); },
                          {"slot 0 reaches 3 tokens and needs 1 KV blocks, its block table has 0"});
  expect_error_containing([&] { given.forward(ForwardBatch{std::vector<int32_t>(20, 1), {run(0, 0, 20, {4})}}); },
                          {"needs 2 KV blocks, its block table has 1"});
  expect_error_containing([&] { given.forward(ForwardBatch{{1}, {run(1, 0, 1, {32})}}); },
                          {"slot 1 block table entry 0 is block 32, the pool has 32"});
  expect_error_containing([&] { given.forward(ForwardBatch{{1}, {run(0, 16, 1, {0})}}); },
                          {"slot 0 reaches 17 tokens and needs 2 KV blocks, its block table has 1"});
  expect_error_containing([&] { given.forward(ForwardBatch{{1}, {run(0, 256, 1, std::vector<int32_t>(17, 0))}}); },
                          {"slot 0 runs positions 256..257, max_context is 256"});
  CudaBackendOptions too_small = serving_options(2, 15);
  expect_error_containing([&] { CudaBackend backend(*model, too_small); },
                          {"a KV pool of 15 blocks (240 tokens) cannot hold one sequence of max_context 256"});
}

TEST(CudaServing, PoolFromMemoryFractionStaysWithinIt) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  size_t free_before = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  const double fraction = 0.25;
  CudaBackendOptions options = serving_options(4, 0);
  options.gpu_memory_utilization = fraction;
  int64_t blocks = 0;
  {
    CudaBackend backend(*model, options);
    blocks = backend.kv_block_pool()->num_blocks;
    size_t free_after = 0;
    ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
    // cudaMalloc rounds each allocation up to its 2 MiB pages: a few MiB over the plan's bytes.
    const double held = static_cast<double>(total - free_after);
    EXPECT_LE(held, fraction * static_cast<double>(total) + (8 << 20)) << backend.memory_summary();
    // Far more than 4 slots x 256 tokens: the pool is what the fraction leaves, not slots x context.
    EXPECT_GT(blocks * kKvBlockSize, 100 * 4 * 256) << backend.memory_summary();
  }
  CudaBackendOptions half = options;
  half.gpu_memory_utilization = fraction / 2;
  CudaBackend smaller(*model, half);
  EXPECT_LT(smaller.kv_block_pool()->num_blocks, blocks);
}

// The Engine on the CUDA backend with a pool of 48 blocks for 6 sequences of up to 170 tokens: chunked
// prefill, preemption by recompute, every request finished with its length and no error.
TEST(CudaServing, EngineFinishesEveryRequestThroughPreemption) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  auto tokenizer = BpeTokenizer::load(default_model() / "tokenizer.json");
  CudaBackend backend(*model, serving_options(6, 48));
  EngineConfig config;
  config.scheduler = SchedulerConfig{6, 64, 256, 48, 6};
  config.max_waiting = 64;
  Metrics metrics;
  Engine engine(backend, tokenizer.get(), config, metrics);
  std::mt19937 rng(7);
  std::vector<std::shared_ptr<RequestStream>> streams;
  constexpr int kRequests = 16;
  for (int r = 0; r < kRequests; ++r) {
    EngineRequest request;
    request.prompt = random_tokens(rng, 10 + r * 3, tokenizer->vocab_size());
    request.max_tokens = 120;
    streams.push_back(engine.submit(request));
    ASSERT_NE(streams.back(), nullptr);
  }
  for (int r = 0; r < kRequests; ++r) {
    StreamEvent event;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      if (streams[r]->next(event, std::chrono::milliseconds(100)) && event.finished) break;
    }
    ASSERT_TRUE(event.finished) << "request " << r;
    EXPECT_TRUE(event.error.empty()) << "request " << r << ": " << event.error;
    EXPECT_EQ(event.finish_reason, FinishReason::Length) << "request " << r;
    EXPECT_EQ(event.completion_tokens, 120) << "request " << r;
  }
  EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
  EXPECT_EQ(engine.in_flight(), 0);
}

}  // namespace
}  // namespace uberlm
