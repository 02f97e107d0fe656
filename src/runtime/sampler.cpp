#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/error.h"

namespace uberlm {

int argmax(const float* values, int count) {
  int best = 0;
  for (int i = 1; i < count; ++i) {
    if (values[i] > values[best]) best = i;
  }
  return best;
}

std::vector<int32_t> argmax_rows(const std::vector<float>& logits, int64_t rows, int vocab) {
  std::vector<int32_t> out(rows);
  for (int64_t r = 0; r < rows; ++r) out[r] = argmax(logits.data() + r * vocab, vocab);
  return out;
}

double log_probability(const float* logits, int vocab_size, int32_t target) {
  const float max_logit = *std::max_element(logits, logits + vocab_size);
  double sum = 0.0;
  for (int i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  return static_cast<double>(logits[target]) - max_logit - std::log(sum);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {
  if (!(params.temperature >= 0.0f) || !std::isfinite(params.temperature)) {
    fail("sampling: temperature must be a finite number >= 0, got {}", params.temperature);
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) fail("sampling: top_p must be in (0, 1], got {}", params.top_p);
  if (params.top_k < 0) fail("sampling: top_k must be >= 0, got {}", params.top_k);
}

int Sampler::sample(const float* logits, int vocab_size) {
  if (params_.temperature == 0.0f) return argmax(logits, vocab_size);
  // Candidates sorted by logit, descending (ties by id), cut to top-k.
  std::vector<int> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  const int keep = params_.top_k > 0 ? std::min(params_.top_k, vocab_size) : vocab_size;
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(keep);
  // softmax(logits / T) over the candidates, in double for a stable cumulative sum.
  std::vector<double> probs(keep);
  const double top = logits[order[0]];
  double total = 0.0;
  for (int i = 0; i < keep; ++i) {
    probs[i] = std::exp((logits[order[i]] - top) / params_.temperature);
    total += probs[i];
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  int cut = keep;
  if (params_.top_p < 1.0f) {
    double cumulative = 0.0;
    for (int i = 0; i < keep; ++i) {
      cumulative += probs[i] / total;
      if (cumulative >= params_.top_p) {
        cut = i + 1;
        break;
      }
    }
  }
  const double mass = std::accumulate(probs.begin(), probs.begin() + cut, 0.0);
  double draw = std::uniform_real_distribution<double>(0.0, mass)(rng_);
  for (int i = 0; i < cut; ++i) {
    draw -= probs[i];
    if (draw < 0.0) return order[i];
  }
  return order[cut - 1];
}

}  // namespace uberlm
