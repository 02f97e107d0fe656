// The CPU reference decoder against HF transformers: tiny random checkpoints made by
// tests/oracle/fixtures_models.py with the logits transformers computed for them (fp32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "model/model.h"
#include "runtime/cpu_backend.h"
#include "runtime/sampler.h"
#include "batch_util.h"
#include "oracle_reference.h"

namespace uberlm {
namespace {

// fp32 engine vs fp32 transformers: only summation order differs, so the gap is rounding (~1e-6);
// 1e-4 of the largest logit catches any real math error.
constexpr double kRelativeTolerance = 1e-4;
constexpr int kMinPromptTokens = 40;
constexpr int kMinDecodeSteps = 16;

std::filesystem::path fixture(const std::string& name) { return std::filesystem::path(UBERLM_FIXTURE_DIR) / "models" / name; }

class DecoderOracle : public ::testing::TestWithParam<std::string> {};

TEST_P(DecoderOracle, PrefillAndGreedyDecodeMatchTransformers) {
  const auto dir = fixture(GetParam());
  ASSERT_TRUE(std::filesystem::exists(dir)) << "missing fixture " << dir << " (run tests/oracle/make_fixtures.py)";
  auto model = Model::load(dir);
  OracleReference ref = load_oracle_reference(dir);
  const int vocab = model->config.vocab_size;
  const int prompt_len = static_cast<int>(ref.prompt.size());
  ASSERT_GE(prompt_len, kMinPromptTokens);
  ASSERT_GE(static_cast<int>(ref.decode_ids.size()), kMinDecodeSteps);

  CpuBackend backend(*model, 1);
  ForwardResult result = backend.forward(single_run(ref.prompt, 0, 0, LogitRows::All));
  ASSERT_EQ(result.rows, prompt_len);
  for (int p = 0; p < prompt_len; ++p) {
    double err = max_relative_error(&result.logits[p * vocab], &ref.prefill_logits[p * vocab], vocab);
    ASSERT_LE(err, kRelativeTolerance) << GetParam() << " prefill position " << p;
  }
  int32_t next = argmax(&result.logits[(prompt_len - 1) * vocab], vocab);
  for (size_t step = 0; step < ref.decode_ids.size(); ++step) {
    ASSERT_EQ(next, ref.decode_ids[step]) << GetParam() << " greedy token at step " << step;
    result = backend.forward(single_run({next}, 0, prompt_len + static_cast<int64_t>(step)));
    double err = max_relative_error(result.logits.data(), &ref.decode_logits[step * vocab], vocab);
    ASSERT_LE(err, kRelativeTolerance) << GetParam() << " decode step " << step;
    next = argmax(result.logits.data(), vocab);
  }
}

INSTANTIATE_TEST_SUITE_P(TinyModels, DecoderOracle,
                         ::testing::Values("qwen3_5_hybrid", "qwen3_5_nested", "qwen3_5_conditioned", "qwen3",
                                           "llama", "qwen2"));

// Three sequences of different lengths prefilled and decoded together give exactly the logits each
// gives alone: every kernel computes a token's values in an order independent of the batch.
TEST(DecoderBatching, BatchedSequencesEqualEachAlone) {
  auto model = Model::load(fixture("qwen3_5_hybrid"));
  OracleReference ref = load_oracle_reference(fixture("qwen3_5_hybrid"));
  const int vocab = model->config.vocab_size;
  const std::vector<int> lengths = {70, 45, 23};
  constexpr int kDecodeSteps = 6;

  auto prompt_of = [&](int s) {
    std::vector<int32_t> prompt(ref.prompt.begin(), ref.prompt.begin() + lengths[s]);
    std::rotate(prompt.begin(), prompt.begin() + s, prompt.end());  // distinct contents too
    return prompt;
  };
  // Alone: logits after the prompt and after each greedy step.
  std::vector<std::vector<float>> alone(lengths.size());
  for (size_t s = 0; s < lengths.size(); ++s) {
    CpuBackend backend(*model, 1);
    auto prompt = prompt_of(s);
    ForwardResult r = backend.forward(single_run(prompt, 0, 0));
    alone[s] = r.logits;
    for (int step = 0; step < kDecodeSteps; ++step) {
      r = backend.forward(single_run({argmax(r.logits.data(), vocab)}, 0, lengths[s] + step));
      alone[s].insert(alone[s].end(), r.logits.begin(), r.logits.end());
    }
  }
  // Together, in one batch per step.
  CpuBackend backend(*model, static_cast<int>(lengths.size()));
  ForwardBatch batch;
  for (size_t s = 0; s < lengths.size(); ++s) {
    auto prompt = prompt_of(s);
    batch.tokens.insert(batch.tokens.end(), prompt.begin(), prompt.end());
    batch.chunks.push_back(chunk_at(static_cast<int>(s), 0, lengths[s]));
  }
  std::vector<std::vector<float>> together(lengths.size());
  for (int step = 0; step <= kDecodeSteps; ++step) {
    ForwardResult r = backend.forward(batch);
    ASSERT_EQ(r.rows, static_cast<int64_t>(lengths.size()));
    batch.tokens.clear();
    batch.chunks.clear();
    for (size_t s = 0; s < lengths.size(); ++s) {
      const float* row = &r.logits[s * vocab];
      together[s].insert(together[s].end(), row, row + vocab);
      batch.tokens.push_back(argmax(row, vocab));
      batch.chunks.push_back(chunk_at(static_cast<int>(s), lengths[s] + step, 1));
    }
  }
  for (size_t s = 0; s < lengths.size(); ++s) {
    ASSERT_EQ(together[s], alone[s]) << "sequence " << s << " differs when batched";
  }
}

}  // namespace
}  // namespace uberlm
