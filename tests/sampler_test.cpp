// Sampling: greedy, temperature, top-k, top-p, min-p and seeds, checked by counting draws; logit_bias
// and the penalties, checked exactly on greedy picks whose arithmetic is worked out in the comments.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
#include "expect_error.h"
#include "runtime/sampler.h"

namespace uberlm {
namespace {

const std::vector<float> kLogits = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};

std::map<int, int> histogram(const SamplingParams& params, int draws) {
  Sampler sampler(params);
  std::map<int, int> counts;
  for (int i = 0; i < draws; ++i) ++counts[sampler.sample(kLogits.data(), static_cast<int>(kLogits.size()))];
  return counts;
}

TEST(Sampler, GreedyTakesTheLowestIdAmongTies) {
  Sampler sampler(SamplingParams{});
  EXPECT_EQ(sampler.sample(kLogits.data(), 5), 1);
}

TEST(Sampler, TemperatureFollowsTheSoftmax) {
  constexpr int kDraws = 200000;
  auto counts = histogram({1.0f, 0, 1.0f, 7}, kDraws);
  double total = 0.0;
  for (float logit : kLogits) total += std::exp(logit);
  for (int id = 0; id < 5; ++id) {
    const double expected = std::exp(kLogits[id]) / total;
    // 5 standard deviations of a binomial proportion.
    const double sigma = std::sqrt(expected * (1 - expected) / kDraws);
    EXPECT_NEAR(counts[id] / static_cast<double>(kDraws), expected, 5 * sigma) << "token " << id;
  }
}

TEST(Sampler, TopKKeepsOnlyTheKMostLikely) {
  auto counts = histogram({1.0f, 2, 1.0f, 3}, 20000);
  EXPECT_EQ(counts.count(0) + counts.count(2) + counts.count(4), 0u);
  EXPECT_GT(counts[1], 0);
  EXPECT_GT(counts[3], 0);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  // p(1) = p(3) = 0.392 each: 0.783 >= 0.7, so the nucleus is {1, 3}.
  auto counts = histogram({1.0f, 0, 0.7f, 11}, 20000);
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_GT(counts[1], 9000);
  EXPECT_GT(counts[3], 9000);
}

TEST(Sampler, SameSeedSameDrawsOtherSeedOtherDraws) {
  auto draws = [](uint64_t seed) {
    Sampler sampler({1.5f, 0, 1.0f, seed});
    std::vector<int> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(sampler.sample(kLogits.data(), 5));
    return ids;
  };
  EXPECT_EQ(draws(42), draws(42));
  EXPECT_NE(draws(42), draws(43));
}

TEST(Sampler, MinPKeepsTokensAtLeastThatFractionOfTheTopOne) {
  // Relative to p(1) = p(3): p(2) = e^-1 = 0.37, p(0) = e^-2 = 0.14, p(4) = e^-3 = 0.05; min_p 0.3 keeps {1, 3, 2}
  // and the draws follow the softmax renormalised over them.
  constexpr int kDraws = 200000;
  auto counts = histogram({.temperature = 1.0f, .seed = 5, .min_p = 0.3f}, kDraws);
  EXPECT_EQ(counts.count(0) + counts.count(4), 0u);
  const double total = 2.0 + std::exp(-1.0);
  for (int id : {1, 2, 3}) {
    const double expected = std::exp(kLogits[id] - 2.0) / total;
    const double sigma = std::sqrt(expected * (1 - expected) / kDraws);
    EXPECT_NEAR(counts[id] / static_cast<double>(kDraws), expected, 5 * sigma) << "token " << id;
  }
}

// Greedy picks of `steps` tokens from the same logits, each pick counted by the penalties.
std::vector<int> greedy_picks(const SamplingParams& params, const std::vector<float>& logits, int steps,
                              const std::vector<int32_t>& prompt = {}) {
  Sampler sampler(params, prompt);
  std::vector<int> picks;
  for (int i = 0; i < steps; ++i) picks.push_back(sampler.sample(logits.data(), static_cast<int>(logits.size())));
  return picks;
}

TEST(Sampler, LogitBiasIsAddedToTheLogits) {
  EXPECT_EQ(greedy_picks({.logit_bias = {{4, 100.0f}}}, kLogits, 1), std::vector<int>{4});
  EXPECT_EQ(greedy_picks({.logit_bias = {{1, -100.0f}, {3, -0.5f}}}, kLogits, 1), std::vector<int>{3});  // 2 - 0.5 > 1
  EXPECT_EQ(greedy_picks({.logit_bias = {{1, -100.0f}, {3, -1.5f}}}, kLogits, 1), std::vector<int>{2});  // 0.5 < 1
}

TEST(Sampler, FrequencyPenaltyGrowsWithEachOccurrence) {
  // 1.0 - 0.6 n for token 0, 0.5 - 0.6 n for token 1, 0 for token 2: picks 0 (-> 0.4), 1 (-> -0.1),
  // 0 (-> -0.2), then 2 at 0.0.
  EXPECT_EQ(greedy_picks({.frequency_penalty = 0.6f}, {1.0f, 0.5f, 0.0f}, 4), (std::vector<int>{0, 1, 0, 2}));
}

TEST(Sampler, PresencePenaltyCountsATokenOnce) {
  // Token 0 stays at 1.0 - 0.6 = 0.4 however often it comes, above 1's 0.5 - 0.6 and 2's 0.
  EXPECT_EQ(greedy_picks({.presence_penalty = 0.6f}, {1.0f, 0.5f, 0.0f}, 4), (std::vector<int>{0, 1, 0, 0}));
  // A negative presence penalty favours what was said. With frequency 0.5, token 0 goes 1.0 -> 1.1 -> 0.6
  // and token 1 0.95 -> 1.05 -> 0.55 (without the presence term: [0, 1, 0, ...]).
  EXPECT_EQ(greedy_picks({.presence_penalty = -0.6f, .frequency_penalty = 0.5f}, {1.0f, 0.95f, 0.0f}, 5),
            (std::vector<int>{0, 0, 1, 1, 0}));
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOfPromptAndOutput) {
  // Output only: 1.0 -> 0.5 after the first pick, below 0.9; then 0.9 -> 0.45, below 0.5.
  EXPECT_EQ(greedy_picks({.repetition_penalty = 2.0f}, {1.0f, 0.9f}, 3), (std::vector<int>{0, 1, 0}));
  // A prompt token is penalised before any output: 1.0 / 2 < 0.9.
  EXPECT_EQ(greedy_picks({.repetition_penalty = 2.0f}, {1.0f, 0.9f}, 1, {0, 0}), std::vector<int>{1});
  // Negative logits are multiplied: -1.0 * 2 < -1.5.
  EXPECT_EQ(greedy_picks({.repetition_penalty = 2.0f}, {-1.0f, -1.5f}, 1, {0}), std::vector<int>{1});
  // A penalty below 1 rewards repeats: -1.5 * 0.5 > -1.0.
  EXPECT_EQ(greedy_picks({.repetition_penalty = 0.5f}, {-1.0f, -1.5f}, 1, {1}), std::vector<int>{1});
}

TEST(Sampler, PenalisedSamplingIsDeterministicPerSeed) {
  auto draws = [](uint64_t seed) {
    Sampler sampler({.temperature = 1.0f, .seed = seed, .min_p = 0.05f, .presence_penalty = 0.5f,
                     .frequency_penalty = 0.3f, .repetition_penalty = 1.3f, .logit_bias = {{4, 1.0f}}},
                    {1, 3});
    std::vector<int> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(sampler.sample(kLogits.data(), 5));
    return ids;
  };
  EXPECT_EQ(draws(42), draws(42));
  EXPECT_NE(draws(42), draws(43));
}

TEST(Sampler, TokenLogprobsAreTheLogSoftmaxWithTheMostLikelyFirst) {
  double normaliser = 0.0;
  for (float logit : kLogits) normaliser += std::exp(static_cast<double>(logit));
  normaliser = std::log(normaliser);
  const TokenLogprobs got = token_logprobs(kLogits.data(), 5, 2, 4);
  EXPECT_EQ(got.token, 2);
  EXPECT_NEAR(got.logprob, 1.0 - normaliser, 1e-12);
  const std::vector<int> order = {1, 3, 2, 0};  // ties (1 and 3) by lowest id
  ASSERT_EQ(got.top.size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(got.top[i].first, order[i]);
    EXPECT_NEAR(got.top[i].second, kLogits[order[i]] - normaliser, 1e-12);
  }
  EXPECT_TRUE(token_logprobs(kLogits.data(), 5, 4, 0).top.empty());
  EXPECT_EQ(token_logprobs(kLogits.data(), 5, 4, 20).top.size(), 5u);  // at most the vocabulary
}

TEST(Sampler, PlainGreedyOnlyWithoutBiasOrPenalties) {
  EXPECT_TRUE(SamplingParams{}.is_plain_greedy());
  EXPECT_TRUE((SamplingParams{.top_k = 3, .min_p = 0.5f}.is_plain_greedy()));  // no effect at temperature 0
  EXPECT_FALSE(SamplingParams{.temperature = 0.5f}.is_plain_greedy());
  EXPECT_FALSE(SamplingParams{.presence_penalty = 0.1f}.is_plain_greedy());
  EXPECT_FALSE(SamplingParams{.frequency_penalty = -0.1f}.is_plain_greedy());
  EXPECT_FALSE(SamplingParams{.repetition_penalty = 1.1f}.is_plain_greedy());
  EXPECT_FALSE((SamplingParams{.logit_bias = {{0, 0.0f}}}.is_plain_greedy()));
}

// Each bad value is refused with an error naming the request field that carries it.
TEST(Sampler, InvalidParametersNameTheirField) {
  const std::vector<std::pair<SamplingParams, std::string>> cases = {
      {{.temperature = -1.0f}, "temperature"},
      {{.temperature = NAN}, "temperature"},
      {{.top_p = 0.0f}, "top_p"},
      {{.top_k = -2}, "top_k"},
      {{.min_p = 1.5f}, "min_p"},
      {{.presence_penalty = 2.5f}, "presence_penalty"},
      {{.frequency_penalty = -2.5f}, "frequency_penalty"},
      {{.repetition_penalty = 0.0f}, "repetition_penalty"},
      {{.repetition_penalty = INFINITY}, "repetition_penalty"},
      {{.logit_bias = {{3, 101.0f}}}, "logit_bias"},
      {{.logit_bias = {{-1, 1.0f}}}, "logit_bias"},
  };
  for (const auto& [params, field] : cases) {
    expect_error_containing([&] { Sampler sampler(params); }, {"'" + field + "'"});
  }
}

}  // namespace
}  // namespace uberlm
