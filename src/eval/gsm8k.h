#pragma once
// The GSM8K text layout: what the default model was trained on, what `eval gsm8k` prompts with and
// what `eval ppl` scores. One definition, so the three cannot drift apart.
#include <string>

namespace uberlm {

inline std::string gsm8k_prompt(const std::string& question) {
  return "Q: " + question + "\nA: Let me solve this step by step.\n";
}

inline std::string gsm8k_document(const std::string& question, const std::string& answer) {
  return gsm8k_prompt(question) + answer;
}

}  // namespace uberlm
