#pragma once
// Token sampling from one row of logits: greedy, or temperature with top-k and top-p (nucleus),
// from a per-sequence seeded generator so a request's output does not depend on its batch.
#include <cstdint>
#include <random>
#include <vector>

namespace uberlm {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  int sample(const float* logits, int vocab_size);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

int argmax(const float* values, int count);
// log softmax(logits)[target] over one row of vocab_size logits, in double.
double log_probability(const float* logits, int vocab_size, int32_t target);
// argmax of each row of logits [rows, vocab].
std::vector<int32_t> argmax_rows(const std::vector<float>& logits, int64_t rows, int vocab);

}  // namespace uberlm
