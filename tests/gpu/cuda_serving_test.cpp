// The CUDA backend under the server's engine: KV blocks owned by the scheduler (scrambled block tables give
// the same logits, bit for bit, as contiguous ones), bad block tables are errors, the pool sized from a
// memory fraction, the Engine loop on the CUDA backend finishing every request through preemption, and
// prefix caching's state snapshots (copies that touch nothing else, a restored slot continuing bit for bit
// as the one that saved it, the engine's greedy tokens unchanged by the cache), and --deterministic outputs
// that do not depend on the batch.
// Paths: $UBERLM_DEFAULT_MODEL (else models/default) and $UBERLM_FIXTURE_DIR.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../engine_run.h"
#include "../expect_error.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/cuda/cache_snapshot.h"
#include "runtime/cuda/step_buffers.h"
#include "runtime/cuda_backend.h"
#include "runtime/engine.h"
#include "runtime/engine_stack.h"
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

// The prefix-state copies over a cache layout placed in NaN-poisoned memory: slot 1's states saved to
// snapshot 2 and restored into slot 0 arrive there exactly; slot 1 changed after the save (on the same
// stream) leaves the snapshot as saved; and no other byte (other slots and snapshots, KV pools) is written.
TEST(CudaServing, PrefixStateCopiesMoveOneSlotAndNothingElse) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  const ModelConfig& c = model->config;
  constexpr int kSlots = 3, kSnapshots = 4;
  constexpr int64_t kKvBlocks = 2;
  gpu::DeviceCaches caches;
  gpu::Arena plan;
  gpu::layout_caches(plan, c, kKvBlocks, kSlots, kSnapshots, caches);
  DeviceBuffer memory = gpu_test::poisoned<uint8_t>(plan.used());
  gpu::Arena placed(reinterpret_cast<uintptr_t>(memory.data()));
  gpu::layout_caches(placed, c, kKvBlocks, kSlots, kSnapshots, caches);
  ASSERT_EQ(placed.used(), plan.used());

  const int64_t conv = gpu::conv_state_floats(c), recurrent = gpu::recurrent_state_floats(c);
  std::vector<uint8_t> expected = memory.download<uint8_t>();
  const auto offset_of = [&](const float* device) {
    return reinterpret_cast<uintptr_t>(device) - reinterpret_cast<uintptr_t>(memory.data());
  };
  const auto expect_at = [&](const float* device, const std::vector<float>& values) {
    std::memcpy(expected.data() + offset_of(device), values.data(), values.size() * sizeof(float));
  };
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  int delta_net_layers = 0;
  for (int layer = 0; layer < c.num_layers; ++layer) {
    if (c.layer_kinds[layer] != LayerKind::GatedDeltaNet) continue;
    ++delta_net_layers;
    const gpu::LayerCaches& cache = caches.layers[layer];
    ASSERT_NE(cache.conv_snapshots, nullptr);
    ASSERT_NE(cache.recurrent_snapshots, nullptr);
    for (const auto& [states, snapshots, floats] : {std::tuple{cache.conv_state, cache.conv_snapshots, conv},
                                                    std::tuple{cache.recurrent_state, cache.recurrent_snapshots, recurrent}}) {
      const std::vector<float> saved = gpu_test::random_floats(floats);
      ASSERT_EQ(cudaMemcpy(states + 1 * floats, saved.data(), floats * sizeof(float), cudaMemcpyHostToDevice),
                cudaSuccess);
      expect_at(snapshots + 2 * floats, saved);
      expect_at(states + 0 * floats, saved);
      expect_at(states + 1 * floats, std::vector<float>(floats, 0.0f));
    }
  }
  ASSERT_GT(delta_net_layers, 0);
  gpu::save_prefix_states(c, caches, 1, 2, stream);
  for (int layer = 0; layer < c.num_layers; ++layer) {
    if (c.layer_kinds[layer] != LayerKind::GatedDeltaNet) continue;
    const gpu::LayerCaches& cache = caches.layers[layer];
    ASSERT_EQ(cudaMemsetAsync(cache.conv_state + 1 * conv, 0, conv * sizeof(float), stream), cudaSuccess);
    ASSERT_EQ(cudaMemsetAsync(cache.recurrent_state + 1 * recurrent, 0, recurrent * sizeof(float), stream), cudaSuccess);
  }
  gpu::restore_prefix_states(c, caches, 2, 0, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(stream), cudaSuccess);

  const std::vector<uint8_t> actual = memory.download<uint8_t>();
  ASSERT_EQ(actual.size(), expected.size());
  const auto differs = std::mismatch(actual.begin(), actual.end(), expected.begin()).first;
  EXPECT_EQ(differs, actual.end()) << "first differing byte at offset " << (differs - actual.begin()) << " of "
                                   << actual.size();
}

// The greedy continuation of a sequence: its tokens and every step's logits row.
struct Continuation {
  std::vector<int32_t> tokens;
  std::vector<float> logits;
};

// Slot `slot` over `table` from position `start`: `prompt_tail` in one forward, then `steps` greedy decode steps.
Continuation continue_greedy(CudaBackend& backend, int slot, int64_t start, const std::vector<int32_t>& prompt_tail,
                             const std::vector<int32_t>& table, int steps) {
  Continuation out;
  std::vector<int32_t> next = prompt_tail;
  for (int step = 0; step <= steps; ++step) {
    const int64_t tokens = static_cast<int64_t>(next.size());
    const ForwardResult result = backend.forward(ForwardBatch{
        next, {SequenceChunk{.slot = slot, .start = start, .num_tokens = tokens, .logits = LogitRows::Last, .block_table = table}}});
    start += tokens;
    out.logits.insert(out.logits.end(), result.logits.begin(), result.logits.end());
    next = {static_cast<int32_t>(std::max_element(result.logits.begin(), result.logits.end()) - result.logits.begin())};
    out.tokens.push_back(next.front());
  }
  return out;
}

void expect_same_continuation(const Continuation& restored, const Continuation& reference, const std::string& label) {
  EXPECT_EQ(restored.tokens, reference.tokens) << label;
  ASSERT_EQ(restored.logits.size(), reference.logits.size()) << label;
  for (size_t i = 0; i < reference.logits.size(); ++i) {
    ASSERT_TRUE(std::isfinite(reference.logits[i])) << label << ": reference logit " << i;
    ASSERT_EQ(restored.logits[i], reference.logits[i]) << label << ": logit " << i;
  }
}

// Runs `tokens` in `slot` from `start` over `table`; save_after > 0 asks for prefix snapshot `snapshot` after
// that many of them.
void run_tokens(CudaBackend& backend, int slot, int64_t start, const std::vector<int32_t>& tokens,
                const std::vector<int32_t>& table, int snapshot = -1, int64_t save_after = 0) {
  backend.forward(ForwardBatch{tokens, {SequenceChunk{.slot = slot, .start = start, .num_tokens = static_cast<int64_t>(tokens.size()),
                                                      .logits = LogitRows::Last, .block_table = table,
                                                      .prefix_save_snapshot = snapshot, .prefix_save_after = save_after}}});
}

std::vector<int32_t> own_table(int slot, int64_t blocks_per_slot) {
  std::vector<int32_t> table(blocks_per_slot);
  std::iota(table.begin(), table.end(), static_cast<int32_t>(slot * blocks_per_slot));
  return table;
}

// Slot `slot`'s first `prefix_blocks` blocks of its own table, then those of `other` after them.
std::vector<int32_t> shared_table(int slot, int other, int64_t prefix_blocks, int64_t blocks_per_slot) {
  std::vector<int32_t> table = own_table(slot, blocks_per_slot);
  table.resize(prefix_blocks);
  const std::vector<int32_t> others = own_table(other, blocks_per_slot);
  table.insert(table.end(), others.begin() + prefix_blocks, others.end());
  return table;
}

// What a backend gives for `prefix` run alone in slot 0 over its own blocks, then `prompt_tail` and `steps` greedy
// decode steps.
Continuation continuation_of_prefix(CudaBackend& backend, const std::vector<int32_t>& prefix,
                                    const std::vector<int32_t>& prompt_tail, int64_t blocks_per_slot, int steps) {
  run_tokens(backend, 0, 0, prefix, own_table(0, blocks_per_slot));
  return continue_greedy(backend, 0, static_cast<int64_t>(prefix.size()), prompt_tail, own_table(0, blocks_per_slot),
                         steps);
}

CudaBackendOptions with_prefix_snapshots(CudaBackendOptions options, int snapshots) {
  options.prefix_snapshots = snapshots;
  return options;
}

// A 48-token prefix (three KV blocks) run in slot 0 and saved to snapshot 1 at its run's end, then slot 0
// moved on. Restored into slot 2, which held another sequence's states (and snapshot 1 another's before the
// save), over slot 0's prefix blocks and blocks of its own, it continues exactly as a backend without
// snapshots continues the prefix in one slot: the same forwards (prefix, 5 prompt tokens, 24 decode steps
// through the batch-1 graph), the same greedy tokens and logits bit for bit. Restored again into slot 0, it
// does so again.
TEST(CudaServing, RestoredPrefixContinuesAsTheSequenceThatSavedIt) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  const int vocab = model->config.vocab_size;
  constexpr int kSlots = 3, kDecodeSteps = 24;
  constexpr int64_t kPrefix = 3 * kKvBlockSize, kBlocksPerSlot = 16;
  const CudaBackendOptions plain = serving_options(kSlots, kSlots * kBlocksPerSlot);
  CudaBackend reference(*model, plain), cached(*model, with_prefix_snapshots(plain, 2));
  EXPECT_EQ(reference.max_prefix_snapshots(), 0);
  ASSERT_EQ(cached.max_prefix_snapshots(), 2);
  std::mt19937 rng(11);
  const std::vector<int32_t> prefix = random_tokens(rng, kPrefix, vocab);
  const std::vector<int32_t> prompt_tail = random_tokens(rng, 5, vocab);
  const Continuation expected = continuation_of_prefix(reference, prefix, prompt_tail, kBlocksPerSlot, kDecodeSteps);

  run_tokens(cached, 2, 0, random_tokens(rng, 37, vocab), own_table(2, kBlocksPerSlot));
  run_tokens(cached, 2, 37, random_tokens(rng, 3, vocab), own_table(2, kBlocksPerSlot), 1, 3);
  run_tokens(cached, 0, 0, prefix, own_table(0, kBlocksPerSlot), 1, kPrefix);
  run_tokens(cached, 0, kPrefix, random_tokens(rng, 7, vocab), own_table(0, kBlocksPerSlot));

  cached.restore_prefix(1, 2);
  expect_same_continuation(continue_greedy(cached, 2, kPrefix, prompt_tail,
                                           shared_table(0, 2, kPrefix / kKvBlockSize, kBlocksPerSlot), kDecodeSteps),
                           expected, "restored into slot 2");
  cached.restore_prefix(1, 0);
  expect_same_continuation(
      continue_greedy(cached, 0, kPrefix, prompt_tail, own_table(0, kBlocksPerSlot), kDecodeSteps), expected,
      "restored into slot 0");
  EXPECT_GT(cached.counters().graph_replays, 0);

  const std::vector<int32_t> few = random_tokens(rng, 4, vocab);
  expect_error_containing([&] { run_tokens(cached, 1, 0, few, own_table(1, kBlocksPerSlot), 2, 4); },
                          {"CudaBackend::forward: slot 1 asks to save prefix snapshot 2, the backend keeps 2"});
  expect_error_containing([&] { run_tokens(cached, 1, 0, few, own_table(1, kBlocksPerSlot), 0, 5); },
                          {"CudaBackend::forward: slot 1 asks for a prefix save after 5 of its run's 4 tokens"});
  expect_error_containing([&] { cached.restore_prefix(2, 0); },
                          {"CudaBackend::restore_prefix: invalid prefix snapshot 2 (the backend keeps 2)"});
  expect_error_containing([&] { cached.drop_prefix(-1); }, {"CudaBackend::drop_prefix: invalid prefix snapshot -1"});
  expect_error_containing([&] { run_tokens(reference, 0, 0, few, own_table(0, kBlocksPerSlot), 0, 4); },
                          {"prefix snapshot 0, the backend keeps 0"});
}

// A prefix save between a run's tokens: 48 prefix tokens and 7 more in one forward, beside another slot's
// decode token, saving after the 48th. With --deterministic (a token's values do not depend on how its
// prompt was cut into forwards) the prefix restored into another slot continues bit for bit as a backend
// without snapshots continues the same 48 tokens run alone: so the Gated DeltaNet states were taken at the
// save point, not at the run's end. Without --deterministic the chunked delta rule's pieces fall elsewhere,
// so the greedy tokens must agree.
TEST(CudaServing, PrefixSavedBetweenARunsTokensContinuesAsTheCutPrefill) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  const int vocab = model->config.vocab_size;
  constexpr int kSlots = 3, kDecodeSteps = 16;
  constexpr int64_t kPrefix = 3 * kKvBlockSize, kBlocksPerSlot = 16;
  for (const bool deterministic : {true, false}) {
    CudaBackendOptions plain = serving_options(kSlots, kSlots * kBlocksPerSlot);
    plain.deterministic = deterministic;
    CudaBackend reference(*model, plain), cached(*model, with_prefix_snapshots(plain, 1));
    std::mt19937 rng(29);
    const std::vector<int32_t> prefix = random_tokens(rng, kPrefix, vocab);
    const std::vector<int32_t> prompt_tail = random_tokens(rng, 6, vocab);
    const Continuation expected = continuation_of_prefix(reference, prefix, prompt_tail, kBlocksPerSlot, kDecodeSteps);

    run_tokens(cached, 1, 0, random_tokens(rng, 9, vocab), own_table(1, kBlocksPerSlot));
    std::vector<int32_t> tokens = prefix;
    const std::vector<int32_t> beyond = random_tokens(rng, 7, vocab);
    tokens.insert(tokens.end(), beyond.begin(), beyond.end());
    tokens.push_back(random_tokens(rng, 1, vocab).front());
    cached.forward(ForwardBatch{tokens,
                                {SequenceChunk{.slot = 0, .start = 0, .num_tokens = kPrefix + 7, .logits = LogitRows::Last,
                                               .block_table = own_table(0, kBlocksPerSlot), .prefix_save_snapshot = 0,
                                               .prefix_save_after = kPrefix},
                                 SequenceChunk{.slot = 1, .start = 9, .num_tokens = 1, .logits = LogitRows::Last,
                                               .block_table = own_table(1, kBlocksPerSlot)}}});
    cached.restore_prefix(0, 2);
    const Continuation restored = continue_greedy(
        cached, 2, kPrefix, prompt_tail, shared_table(0, 2, kPrefix / kKvBlockSize, kBlocksPerSlot), kDecodeSteps);
    if (deterministic) {
      expect_same_continuation(restored, expected, "deterministic");
    } else {
      EXPECT_EQ(restored.tokens, expected.tokens);
    }
  }
}

// Requests [first, last) of `prompts` at once, greedy, stepped until all are finished: their output tokens.
std::vector<std::vector<int32_t>> greedy_outputs(Engine& engine, const std::vector<std::vector<int32_t>>& prompts,
                                                 size_t first, size_t last) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t p = first; p < last; ++p) {
    EngineRequest request;
    request.prompt = prompts[p];
    request.max_tokens = 24;
    streams.push_back(engine.submit(request));
    EXPECT_NE(streams.back(), nullptr) << "prompt " << p;
    if (!streams.back()) return {};
  }
  const std::vector<std::vector<StreamEvent>> events = step_until_done(engine, streams);
  std::vector<std::vector<int32_t>> outputs(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    for (const StreamEvent& event : events[i]) outputs[i].insert(outputs[i].end(), event.tokens.begin(), event.tokens.end());
  }
  return outputs;
}

// The engine as `serve --enable-prefix-caching` assembles it (EngineStack, CUDA backend, 16 snapshots), on
// the default model, serving GSM8K-shaped prompts that begin with the same one-shot example, in two waves
// of four: the second wave repeats two first-wave prompts whole and continues the other two as second
// turns, so each starts from a first-wave prompt's cached prefix (its last block boundary). Every
// request's greedy tokens equal those of the same waves without prefix caching. Steps of at most 64
// tokens keep every linear layer on the GEMV in both runs.
TEST(CudaServing, EnginePrefixCachingKeepsTheGreedyTokens) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  auto tokenizer = BpeTokenizer::load(default_model() / "tokenizer.json");
  const auto encode = [&](const std::string& text) {
    const std::vector<int> ids = tokenizer->encode(text);
    return std::vector<int32_t>(ids.begin(), ids.end());
  };
  const auto question = [](const std::string& text) { return "Q: " + text + "\nA: Let me solve this step by step.\n"; };
  const std::string example =
      question("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
               "many clips did Natalia sell altogether in April and May?") +
      "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
      "April and May.\n#### 72\n\n";
  const std::vector<std::string> first_wave = {
      example + question("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                         "How much did she earn?"),
      example + question("Betty is saving money for a new wallet which costs $100. She has only half of the money "
                         "she needs. How much more money does Betty need?"),
      example + question("James writes a 3-page letter to 2 different friends twice a week. How many pages does he "
                         "write a year?"),
      example + question("Mark has a garden with flowers. He planted 10 yellow flowers and 80% more purple ones. "
                         "How many flowers does Mark have?")};
  const std::vector<std::string> second_wave = {
      first_wave[0], first_wave[1],
      first_wave[2] + "He writes each friend 3*2 = <<3*2=6>>6 pages a week.\n#### 624\n\n" +
          question("Albert buys 2 large pizzas and 2 small pizzas. A large pizza has 16 slices and a small pizza "
                   "has 8 slices. How many slices does he eat?"),
      first_wave[3] + "He planted 10*0.8 = <<10*0.8=8>>8 more purple flowers.\n#### 35\n\n" +
          question("Ken poured 2 pounds of jelly beans into a box. How much does the box weigh?")};
  std::vector<std::vector<int32_t>> prompts;
  for (const std::string& text : first_wave) prompts.push_back(encode(text));
  for (const std::string& text : second_wave) prompts.push_back(encode(text));
  ASSERT_GE(encode(example).size(), 3u * kKvBlockSize);
  // What each first-wave prompt leaves cached (its tokens up to the last block boundary before its last
  // token), and which the second-wave prompt built on it begins with.
  int64_t cached_prefix_tokens = 0;
  for (size_t p = 0; p < 4; ++p) {
    const int64_t saved = (static_cast<int64_t>(prompts[p].size()) - 1) / kKvBlockSize * kKvBlockSize;
    ASSERT_GE(prompts[p + 4].size(), static_cast<size_t>(saved));
    ASSERT_TRUE(std::equal(prompts[p].begin(), prompts[p].begin() + saved, prompts[p + 4].begin())) << "prompt " << p + 4;
    cached_prefix_tokens += saved;
  }

  const auto serve_waves = [&](bool prefix_caching, double& hit_tokens) {
    EngineStackOptions options;
    options.device = "cuda";
    options.max_num_seqs = 4;
    options.max_model_len = 512;
    options.max_num_batched_tokens = 64;
    options.kv_cache_tokens = 256 * kKvBlockSize;
    options.loop_thread = false;
    options.enable_prefix_caching = prefix_caching;
    options.prefix_cache_snapshots = 16;
    EngineStack stack(*model, tokenizer.get(), options);
    EXPECT_EQ(stack.config().scheduler.prefix_snapshots, prefix_caching ? 16 : 0);
    std::vector<std::vector<int32_t>> outputs = greedy_outputs(stack.engine(), prompts, 0, 4);
    const std::vector<std::vector<int32_t>> second = greedy_outputs(stack.engine(), prompts, 4, prompts.size());
    outputs.insert(outputs.end(), second.begin(), second.end());
    hit_tokens = stack.metrics().value(Counter::PrefixCacheHitTokens);
    return outputs;
  };
  double hits_without = 0, hits_with = 0;
  const std::vector<std::vector<int32_t>> without = serve_waves(false, hits_without);
  const std::vector<std::vector<int32_t>> with = serve_waves(true, hits_with);
  ASSERT_EQ(with.size(), prompts.size());
  ASSERT_EQ(without.size(), prompts.size());
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_FALSE(without[p].empty()) << "prompt " << p;
    EXPECT_EQ(with[p], without[p]) << "prompt " << p;
  }
  EXPECT_EQ(hits_without, 0.0);
  EXPECT_GE(hits_with, static_cast<double>(cached_prefix_tokens));
}


// What one request gave: its tokens and their logprobs.
struct GreedyOutput {
  std::vector<int32_t> tokens;
  std::vector<double> logprobs;
  bool operator==(const GreedyOutput&) const = default;
};

// --deterministic (issue 18) on the default model: greedy requests give the same tokens and logprobs, bit for
// bit, run alone, all at once, and all at once in reverse order, where the batches also cut prompts into steps
// of 96 tokens (two GEMV pieces for the linear layers), mix prompt chunks with decode rows, and preempt
// sequences by recompute (a pool of 40 blocks for 8 sequences of up to 188 tokens), so a token is computed
// in a prompt in one run and decoded in another. The prompts share their first 48 tokens, and the reversed run
// has prefix caching on and runs prompt 0 (those 48 tokens and one more) before the others in reverse order,
// which then start from its cached states at 48 tokens.
TEST(CudaServing, DeterministicOutputsDoNotDependOnTheBatch) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  auto tokenizer = BpeTokenizer::load(default_model() / "tokenizer.json");
  std::mt19937 rng(1804);
  const std::vector<int32_t> shared = random_tokens(rng, 3 * kKvBlockSize, tokenizer->vocab_size());
  std::vector<std::vector<int32_t>> prompts;
  for (int p = 0; p < 8; ++p) {
    prompts.push_back(shared);
    const std::vector<int32_t> own = random_tokens(rng, 1 + 17 * p, tokenizer->vocab_size());
    prompts.back().insert(prompts.back().end(), own.begin(), own.end());
  }
  struct Run {
    double preemptions = 0, prefix_hit_tokens = 0;
  };
  const auto serve = [&](int slots, int64_t step_tokens, int64_t kv_tokens, const std::vector<size_t>& order,
                         size_t lone_first, bool prefix_caching, Run& run) {
    EngineStackOptions options;
    options.device = "cuda";
    options.deterministic = true;
    options.max_num_seqs = slots;
    options.max_model_len = 512;
    options.max_num_batched_tokens = step_tokens;
    options.kv_cache_tokens = kv_tokens;
    options.loop_thread = false;
    options.enable_prefix_caching = prefix_caching;
    options.prefix_cache_snapshots = 16;
    EngineStack stack(*model, tokenizer.get(), options);
    std::vector<GreedyOutput> outputs(prompts.size());
    const auto submit = [&](size_t p) {
      EngineRequest request;
      request.prompt = prompts[p];
      request.max_tokens = 48;
      request.top_logprobs = 0;
      return stack.engine().submit(request);
    };
    const auto collect = [&](size_t p, const std::vector<StreamEvent>& events) {
      for (const StreamEvent& event : events) {
        for (const TokenLogprobs& l : event.logprobs) {
          outputs[p].tokens.push_back(l.token);
          outputs[p].logprobs.push_back(l.logprob);
        }
      }
    };
    // The first lone_first requests one at a time, then the rest at once.
    for (size_t i = 0; i < lone_first; ++i) collect(order[i], step_until_done(stack.engine(), {submit(order[i])})[0]);
    std::vector<std::shared_ptr<RequestStream>> streams;
    for (size_t i = lone_first; i < order.size(); ++i) streams.push_back(submit(order[i]));
    const std::vector<std::vector<StreamEvent>> events = step_until_done(stack.engine(), streams);
    for (size_t i = lone_first; i < order.size(); ++i) collect(order[i], events[i - lone_first]);
    run.preemptions = stack.metrics().value(Counter::Preemptions);
    run.prefix_hit_tokens = stack.metrics().value(Counter::PrefixCacheHitTokens);
    return outputs;
  };
  std::vector<size_t> forward(prompts.size()), backward(prompts.size());
  std::iota(forward.begin(), forward.end(), 0);
  std::reverse_copy(forward.begin() + 1, forward.end(), backward.begin() + 1);
  backward[0] = 0;
  Run alone_run, together_run, reversed_run;
  const std::vector<GreedyOutput> alone = serve(1, 512, 512, forward, prompts.size(), false, alone_run);
  const std::vector<GreedyOutput> together = serve(8, 96, 40 * kKvBlockSize, forward, 0, false, together_run);
  const std::vector<GreedyOutput> reversed = serve(8, 96, 40 * kKvBlockSize, backward, 1, true, reversed_run);
  EXPECT_EQ(alone_run.preemptions, 0.0);
  EXPECT_GT(together_run.preemptions, 0.0) << "the test means to preempt";
  EXPECT_GT(reversed_run.prefix_hit_tokens, 0.0) << "the test means to start sequences from cached prefixes";
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_EQ(alone[p].tokens.size(), 48u) << "prompt " << p;
    EXPECT_TRUE(together[p] == alone[p]) << "prompt " << p << ": batched output differs from its lone run";
    EXPECT_TRUE(reversed[p] == alone[p]) << "prompt " << p << ": reversed-order output differs from its lone run";
  }
}


// --deterministic at the backend: every logits row of a 150-token sequence is the same bits when its prompt runs
// as one chunk alone, as chunks of 37, 1, 1, 50 and 61 tokens beside other sequences' prompt chunks and decode
// rows, and as 20 decode steps then one 130-token chunk beside others.
TEST(CudaServing, DeterministicLogitsOfATokenDoNotDependOnItsStep) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const auto model = Model::load(default_model());
  const int vocab = model->config.vocab_size;
  CudaBackendOptions options = gpu_test::small_backend_options(4, 512);
  options.deterministic = true;
  CudaBackend backend(*model, options);
  std::mt19937 rng(4120);
  const std::vector<int32_t> sequence = random_tokens(rng, 150, vocab);
  gpu_test::TestSequences sequences(4, options.max_context);
  // Runs `cuts` of `sequence` in slot `slot`, each chunk in a forward after `others` chunks of the other
  // slots (random tokens, their first run a prompt of 23 tokens, then one token a step); every logits row of
  // the sequence in order.
  const auto run = [&](int slot, const std::vector<int64_t>& cuts, int others) {
    std::vector<float> rows;
    int64_t done = 0;
    for (int64_t cut : cuts) {
      ForwardBatch batch;
      batch.chunks.push_back(sequences.run(slot, cut, LogitRows::All));
      batch.tokens.assign(sequence.begin() + done, sequence.begin() + done + cut);
      for (int other = 0; other < others; ++other) {
        const int other_slot = (slot + 1 + other) % 4;
        const int64_t tokens = sequences.length(other_slot) == 0 ? 23 : 1;
        batch.chunks.push_back(sequences.run(other_slot, tokens));
        const std::vector<int32_t> more = random_tokens(rng, tokens, vocab);
        batch.tokens.insert(batch.tokens.end(), more.begin(), more.end());
      }
      const ForwardResult result = backend.forward(batch);
      EXPECT_EQ(result.rows, cut + others);
      rows.insert(rows.end(), result.logits.begin(), result.logits.begin() + cut * vocab);
      done += cut;
    }
    return rows;
  };
  const std::vector<float> alone = run(0, {150}, 0);
  const std::vector<float> cut_up = run(1, {37, 1, 1, 50, 61}, 2);
  std::vector<int64_t> decoded(20, 1);
  decoded.push_back(130);
  sequences.restart(2);
  sequences.restart(3);
  const std::vector<float> decoded_first = run(2, decoded, 1);
  ASSERT_EQ(alone.size(), static_cast<size_t>(150 * vocab));
  ASSERT_EQ(cut_up.size(), alone.size());
  ASSERT_EQ(decoded_first.size(), alone.size());
  for (size_t i = 0; i < alone.size(); ++i) {
    ASSERT_EQ(cut_up[i], alone[i]) << "token " << i / vocab << " logit " << i % vocab << ": chunked beside others";
    ASSERT_EQ(decoded_first[i], alone[i]) << "token " << i / vocab << " logit " << i % vocab << ": decoded first";
  }
}

}  // namespace
}  // namespace uberlm
