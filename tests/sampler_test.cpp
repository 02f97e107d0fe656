// Sampling: greedy, temperature, top-k, top-p and seeds, checked by counting draws.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
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

TEST(Sampler, InvalidParametersAreErrors) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({NAN, 0, 1.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), Error);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), Error);
}

}  // namespace
}  // namespace uberlm
