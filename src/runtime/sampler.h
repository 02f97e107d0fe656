#pragma once
// Token sampling from one row of logits, with vLLM's order of operations: logit_bias, then the
// repetition, frequency and presence penalties, then greedy, or temperature with min-p, top-k and
// top-p (nucleus). Each sequence has its own Sampler: its seeded generator and the token counts the
// penalties need, so a request's output does not depend on its batch.
#include <cstdint>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace uberlm {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int top_k = 0;             // 0: no limit
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
  float min_p = 0.0f;              // keep tokens whose probability is at least min_p x the top token's; 0: off
  float presence_penalty = 0.0f;   // subtracted from the logit of every token the output holds
  float frequency_penalty = 0.0f;  // subtracted once per occurrence of the token in the output
  float repetition_penalty = 1.0f;  // tokens of the prompt or the output: logit / it if positive, else * it
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token id, bias) added to the model's logits

  bool penalizes() const { return presence_penalty != 0.0f || frequency_penalty != 0.0f || repetition_penalty != 1.0f; }
  // Whether the token is the argmax of the model's own logits, which a backend can take without the Sampler.
  bool is_plain_greedy() const { return temperature == 0.0f && !penalizes() && logit_bias.empty(); }
};

class Sampler {
 public:
  // Throws Error naming the first parameter out of range. `prompt`: the tokens the
  // repetition penalty counts besides the output.
  explicit Sampler(const SamplingParams& params, const std::vector<int32_t>& prompt = {});
  // Picks the next token and counts it as output.
  int sample(const float* logits, int vocab_size);

 private:
  // logits [vocab]: logit_bias and the penalties applied in place.
  void adjust(std::vector<float>& logits) const;
  int draw(const float* logits, int vocab_size);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int> output_counts_;  // only with penalties
  std::unordered_set<int32_t> prompt_tokens_;       // only with a repetition penalty
  std::vector<float> adjusted_;                     // scratch row
};

// A token's log-probability under the model: log softmax of the model's own logits (before logit_bias,
// penalties and temperature, as vLLM reports by default), with the most likely tokens beside it.
struct TokenLogprobs {
  int32_t token = 0;
  double logprob = 0.0;
  std::vector<std::pair<int32_t, double>> top;  // (id, logprob), most likely first, ties by lowest id
};

int argmax(const float* values, int count);
// log softmax(logits)[target] over one row of vocab_size logits, in double.
double log_probability(const float* logits, int vocab_size, int32_t target);
// The logprob of `token` and of the `top` most likely ids (at most vocab_size), over one row of logits.
TokenLogprobs token_logprobs(const float* logits, int vocab_size, int32_t token, int top);
// argmax of each row of logits [rows, vocab].
std::vector<int32_t> argmax_rows(const std::vector<float>& logits, int64_t rows, int vocab);

}  // namespace uberlm
