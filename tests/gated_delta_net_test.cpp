// The chunked gated delta rule (the form of the fast prefill kernels) against the recurrent rule the
// decoder runs, token by token, on random inputs: outputs and the final state, over several chunks,
// a partial last chunk and a state carried in from an earlier prompt part.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "ops/cpu/gated_delta_net.h"

namespace uberlm {
namespace {

struct DeltaRuleInputs {
  cpu::GatedDeltaNetShape shape;
  int64_t tokens;
  std::vector<float> mixed, a, b, a_log, dt_bias, state;
};

// Conv outputs ~ N(0, 1); a_log = log of U(1, 16) and dt_bias ~ N(0, 1) as the checkpoints' init draws
// them, `decay_bias` shifts a (more negative: slower decay), so both fast and slow forgetting occur.
DeltaRuleInputs random_inputs(int64_t tokens, float decay_bias, uint64_t seed) {
  DeltaRuleInputs in{{2, 4, 32, 24, 4}, tokens, {}, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(1.0f, 16.0f);
  const int hv = in.shape.num_v_heads;
  in.mixed.resize(tokens * in.shape.conv_dim());
  for (float& x : in.mixed) x = normal(rng);
  for (int64_t i = 0; i < tokens * hv; ++i) {
    in.a.push_back(normal(rng) + decay_bias);
    in.b.push_back(normal(rng));
  }
  for (int h = 0; h < hv; ++h) {
    in.a_log.push_back(std::log(uniform(rng)));
    in.dt_bias.push_back(normal(rng));
  }
  in.state.resize(static_cast<size_t>(hv) * in.shape.k_head_dim * in.shape.v_head_dim);
  for (float& x : in.state) x = 0.5f * normal(rng);
  return in;
}

float max_abs_difference(const std::vector<float>& x, const std::vector<float>& y) {
  float worst = 0.0f;
  for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, std::abs(x[i] - y[i]));
  return worst;
}

float max_abs(const std::vector<float>& x) {
  float worst = 0.0f;
  for (float v : x) worst = std::max(worst, std::abs(v));
  return worst;
}

class ChunkedDeltaRule : public testing::TestWithParam<float> {};

TEST_P(ChunkedDeltaRule, EqualsTheRecurrentRuleTokenByToken) {
  const DeltaRuleInputs in = random_inputs(150, GetParam(), 7);  // chunks of 64: 64 + 64 + 22
  const cpu::GatedDeltaNetShape& shape = in.shape;
  const int64_t conv_dim = shape.conv_dim(), out_dim = shape.value_dim();

  std::vector<float> mixed = in.mixed, state = in.state;
  std::vector<float> recurrent(in.tokens * out_dim, std::nanf(""));
  for (int64_t t = 0; t < in.tokens; ++t) {
    cpu::gated_delta_rule_step(mixed.data() + t * conv_dim, in.a.data() + t * shape.num_v_heads,
                               in.b.data() + t * shape.num_v_heads, in.a_log.data(), in.dt_bias.data(), shape,
                               state.data(), recurrent.data() + t * out_dim);
  }
  const std::vector<float> recurrent_state = state;

  for (int chunk : {64, 16, 1}) {
    std::vector<float> chunked_mixed = in.mixed, chunked_state = in.state;
    std::vector<float> chunked(in.tokens * out_dim, std::nanf(""));
    cpu::gated_delta_rule_chunked(chunked_mixed.data(), in.a.data(), in.b.data(), in.a_log.data(), in.dt_bias.data(),
                                  shape, in.tokens, chunk, chunked_state.data(), chunked.data());
    // Measured (g++ 12, -O2): at most 1.5e-6 of the largest output and 3.5e-7 of the largest state entry
    // over the three decays and chunk sizes; 1e-5 leaves room for other compilers' contractions, while a
    // wrong or missing term is off by O(1).
    const float tolerance = 1e-5f;
    EXPECT_LE(max_abs_difference(chunked, recurrent), tolerance * max_abs(recurrent)) << "chunk " << chunk;
    EXPECT_LE(max_abs_difference(chunked_state, recurrent_state), tolerance * max_abs(recurrent_state))
        << "chunk " << chunk;
  }
}

// a + 4: fast forgetting (exp(g) near 0 within a chunk); a - 4: a state that persists across chunks.
INSTANTIATE_TEST_SUITE_P(Decay, ChunkedDeltaRule, testing::Values(4.0f, 0.0f, -4.0f));

}  // namespace
}  // namespace uberlm
