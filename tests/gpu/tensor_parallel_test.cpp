// Tensor parallelism through NCCL (CudaTensorParallelBackend). On one GPU: a single-rank NCCL run (lm_head
// as a vocabulary shard, all-reduces and the logits all-gather, inside the decode graphs) gives the plain
// CudaBackend's logits bit for bit, prefill, sliced prefill, decode graphs and piecewise logits included.
// With 2 or more GPUs: TP = 2 against TP = 1 within the bf16 tolerance of the GPU tests.
// Paths: $UBERLM_DEFAULT_MODEL (else models/default, relative to the repository root the tests run from).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>

#include "model/model.h"
#include "model/quantize.h"
#include "ops/cuda/cuda_check.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_tensor_parallel_backend.h"
#include "backend_test_util.h"

namespace uberlm {
namespace {

using gpu_test::default_model;
using gpu_test::random_tokens;

// bf16 activations: the ranks' partial sums round differently from one GEMV's (as cuda_backend_test).
constexpr double kMultiGpuTolerance = 2e-2;

int device_count() {
  int devices = 0;
  return cudaGetDeviceCount(&devices) == cudaSuccess ? devices : 0;
}

// The batches both runs see: a 13-token and a 70-token prompt (the sliced linear path), 70 logits rows of a
// restarted slot (more than max_logit_rows: logits in pieces), then decode steps of two slots (graphs).
template <typename Compare>
void run_same_batches(Backend& a, Backend& b, int vocab, int64_t max_context, Compare&& compare) {
  std::mt19937 rng(2024);
  gpu_test::TestSequences sequences(2, max_context);
  ForwardBatch prefill;
  prefill.tokens = random_tokens(rng, 13 + 70, vocab);
  prefill.chunks = {sequences.run(0, 13), sequences.run(1, 70)};
  compare(a.forward(prefill), b.forward(prefill), "prefill");
  sequences.restart(1);
  ForwardBatch every_token;
  every_token.tokens = random_tokens(rng, 70, vocab);
  every_token.chunks = {sequences.run(1, 70, LogitRows::All)};
  compare(a.forward(every_token), b.forward(every_token), "every-token logits");
  for (int step = 0; step < 6; ++step) {
    ForwardBatch decode;
    decode.tokens = random_tokens(rng, 2, vocab);
    decode.chunks = {sequences.run(0, 1), sequences.run(1, 1)};
    compare(a.forward(decode), b.forward(decode), "decode step " + std::to_string(step));
  }
}

void expect_single_rank_equals_plain(const Model& model) {
  const CudaBackendOptions options = gpu_test::small_backend_options(2);
  CudaBackend plain(model, options);
  CudaTensorParallelBackend nccl(model, 1, options);
  run_same_batches(plain, nccl, model.config.vocab_size, options.max_context, [](const ForwardResult& a,
                                                                                 const ForwardResult& b,
                                                                                 const std::string& label) {
    EXPECT_EQ(a.rows, b.rows) << label;
    EXPECT_TRUE(a.logits == b.logits) << label;
  });
  EXPECT_GT(nccl.rank(0).counters().graph_captures, 0) << "decode steps must run as graphs with NCCL inside";
  EXPECT_GT(nccl.rank(0).counters().graph_replays, 0);
}

TEST(TensorParallelNccl, SingleRankEqualsPlainBackendExactly) {
  ASSERT_GT(device_count(), 0) << "no CUDA device: these tests run on the GPU machine";
  const auto model = Model::load(default_model());
  expect_single_rank_equals_plain(*model);
}

TEST(TensorParallelNccl, SingleRankEqualsPlainBackendExactlyWithNvfp4Weights) {
  ASSERT_GT(device_count(), 0) << "no CUDA device: these tests run on the GPU machine";
  auto model = Model::load(default_model());
  ASSERT_GT(quantize_model_at_load(*model), 0);
  expect_single_rank_equals_plain(*model);
}

TEST(TensorParallelNccl, TwoRanksMatchOneGpu) {
  if (device_count() < 2) GTEST_SKIP() << "needs 2 GPUs; " << device_count() << " visible";
  const auto model = Model::load(default_model());
  const int64_t vocab = model->config.vocab_size;
  const CudaBackendOptions options = gpu_test::small_backend_options(2);
  CudaBackend single(*model, options);
  CudaTensorParallelBackend sharded(*model, 2, options);
  run_same_batches(single, sharded, static_cast<int>(vocab), options.max_context, [&](const ForwardResult& a,
                                                                                      const ForwardResult& b,
                                                                                      const std::string& label) {
    ASSERT_EQ(a.rows, b.rows) << label;
    for (int64_t r = 0; r < a.rows; ++r) {
      double ref_max = 0, err_max = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        const double x = a.logits[r * vocab + v], y = b.logits[r * vocab + v];
        ASSERT_TRUE(std::isfinite(y)) << label << " row " << r;
        ref_max = std::max(ref_max, std::fabs(x));
        err_max = std::max(err_max, std::fabs(x - y));
      }
      EXPECT_LE(err_max / ref_max, kMultiGpuTolerance) << label << " row " << r;
    }
  });
}

TEST(TensorParallelNccl, MoreRanksThanGpusIsAnError) {
  ASSERT_GT(device_count(), 0) << "no CUDA device: these tests run on the GPU machine";
  const auto model = Model::load(default_model());
  const int too_many = device_count() + 1;
  try {
    CudaTensorParallelBackend backend(*model, too_many, gpu_test::small_backend_options(1));
    ADD_FAILURE() << "expected an error for " << too_many << " ranks";
  } catch (const Error& error) {
    // The default model shards over 2 ranks; over more it names the config field or the GPU count.
    const std::string message = error.what();
    EXPECT_TRUE(message.find("GPUs") != std::string::npos || message.find("num_attention_heads") != std::string::npos)
        << message;
  }
}

}  // namespace
}  // namespace uberlm
