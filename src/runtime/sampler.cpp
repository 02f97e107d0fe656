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

namespace {

// max + log sum exp(logits - max), in double: log softmax(logits)[i] = logits[i] - this.
double log_normaliser(const float* logits, int vocab_size) {
  const float max_logit = *std::max_element(logits, logits + vocab_size);
  double sum = 0.0;
  for (int i = 0; i < vocab_size; ++i) sum += std::exp(static_cast<double>(logits[i]) - max_logit);
  return max_logit + std::log(sum);
}

}  // namespace

double log_probability(const float* logits, int vocab_size, int32_t target) {
  return static_cast<double>(logits[target]) - log_normaliser(logits, vocab_size);
}

TokenLogprobs token_logprobs(const float* logits, int vocab_size, int32_t token, int top) {
  const double normaliser = log_normaliser(logits, vocab_size);
  TokenLogprobs out{token, static_cast<double>(logits[token]) - normaliser, {}};
  const int count = std::min(top, vocab_size);
  if (count <= 0) return out;
  std::vector<int> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + count, order.end(),
                    [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (int i = 0; i < count; ++i) out.top.emplace_back(order[i], static_cast<double>(logits[order[i]]) - normaliser);
  return out;
}

namespace {

// The ranges are OpenAI's (penalties, logit_bias) and vLLM's (min_p, repetition_penalty).
void check_params(const SamplingParams& params) {
  auto require = [](bool ok, const char* field, const std::string& rule, float value) {
    if (!ok) fail("sampling: '{}' must be {}, got {}", field, rule, value);
  };
  require(std::isfinite(params.temperature) && params.temperature >= 0.0f, "temperature", "a finite number >= 0",
          params.temperature);
  require(params.top_p > 0.0f && params.top_p <= 1.0f, "top_p", "in (0, 1]", params.top_p);
  require(params.top_k >= 0, "top_k", ">= 0", static_cast<float>(params.top_k));
  require(params.min_p >= 0.0f && params.min_p <= 1.0f, "min_p", "in [0, 1]", params.min_p);
  require(params.presence_penalty >= -2.0f && params.presence_penalty <= 2.0f, "presence_penalty", "in [-2, 2]",
          params.presence_penalty);
  require(params.frequency_penalty >= -2.0f && params.frequency_penalty <= 2.0f, "frequency_penalty", "in [-2, 2]",
          params.frequency_penalty);
  require(std::isfinite(params.repetition_penalty) && params.repetition_penalty > 0.0f, "repetition_penalty",
          "a finite number > 0", params.repetition_penalty);
  for (const auto& [token, bias] : params.logit_bias) {
    if (token < 0) fail("sampling: 'logit_bias' has a negative token id {}", token);
    require(bias >= -100.0f && bias <= 100.0f, "logit_bias", "in [-100, 100]", bias);
  }
}

}  // namespace

Sampler::Sampler(const SamplingParams& params, const std::vector<int32_t>& prompt) : params_(params), rng_(params.seed) {
  check_params(params);
  if (params.repetition_penalty != 1.0f) prompt_tokens_.insert(prompt.begin(), prompt.end());
}

int Sampler::sample(const float* logits, int vocab_size) {
  if (!params_.logit_bias.empty() || params_.penalizes()) {
    adjusted_.assign(logits, logits + vocab_size);
    adjust(adjusted_);
    logits = adjusted_.data();
  }
  const int token = params_.temperature == 0.0f ? argmax(logits, vocab_size) : draw(logits, vocab_size);
  if (params_.penalizes()) ++output_counts_[token];
  return token;
}

void Sampler::adjust(std::vector<float>& logits) const {
  const int vocab = static_cast<int>(logits.size());
  for (const auto& [token, bias] : params_.logit_bias) {
    if (token >= vocab) fail("sampling: logit_bias token id {} is outside the vocabulary [0, {})", token, vocab);
    logits[token] += bias;
  }
  auto repeat = [&](int32_t token) {
    float& logit = logits[token];
    logit = logit > 0.0f ? logit / params_.repetition_penalty : logit * params_.repetition_penalty;
  };
  if (params_.repetition_penalty != 1.0f) {
    for (int32_t token : prompt_tokens_) repeat(token);
    for (const auto& [token, count] : output_counts_) {
      if (!prompt_tokens_.count(token)) repeat(token);
    }
  }
  for (const auto& [token, count] : output_counts_) {
    logits[token] -= params_.frequency_penalty * static_cast<float>(count) + params_.presence_penalty;
  }
}

int Sampler::draw(const float* logits, int vocab_size) {
  // Candidates sorted by logit, descending (ties by id), cut to top-k.
  std::vector<int> order(vocab_size);
  std::iota(order.begin(), order.end(), 0);
  int keep = params_.top_k > 0 ? std::min(params_.top_k, vocab_size) : vocab_size;
  auto by_logit = [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  order.resize(keep);
  // softmax(logits / T) over the candidates relative to the top one, in double for a stable cumulative sum.
  std::vector<double> probs(keep);
  const double top = logits[order[0]];
  for (int i = 0; i < keep; ++i) probs[i] = std::exp((logits[order[i]] - top) / params_.temperature);
  // min-p: p_i >= min_p * p_top, i.e. probs[i] >= min_p; the same set whether cut before or after top-k.
  while (keep > 1 && probs[keep - 1] < params_.min_p) --keep;
  const double total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
  // Nucleus over the survivors: the smallest prefix whose probability reaches top_p.
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
