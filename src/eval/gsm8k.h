#pragma once
// GSM8K: the text layout the default model was trained on (what `eval gsm8k` prompts with and what
// `eval ppl` scores: one definition, so the two cannot drift apart), the question file, the seeded
// draw, answer scoring and the accuracy run over any completion source (a server or the engine).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace uberlm {

inline std::string gsm8k_prompt(const std::string& question) {
  return "Q: " + question + "\nA: Let me solve this step by step.\n";
}

inline std::string gsm8k_document(const std::string& question, const std::string& answer) {
  return gsm8k_prompt(question) + answer;
}

// A GSM8K JSONL row as one document: its "text", or question and answer in the training layout.
// Errors name the file and line.
std::string gsm8k_document_text(const nlohmann::json& row, const std::string& path, int line_number);

struct Gsm8kQuestion {
  int index = 0;  // the row of the data file, from 0
  std::string question;
  std::string gold;  // the normalised number after the answer's '####'
};

// Every question of a GSM8K JSONL file (string fields "question" and "answer" with a '####' line).
std::vector<Gsm8kQuestion> read_gsm8k_questions(const std::string& path);

// "1,234.50" -> "1234.5": commas dropped, trailing fractional zeros and a trailing '.' removed.
std::string normalize_gsm8k_number(std::string number);
// The number after the first '####', else the last number of the text, normalised; "" when none.
std::string gsm8k_answer_number(const std::string& text);
// `count` distinct indices of [0, total) drawn with the seed (a partial Fisher-Yates shuffle over
// mt19937_64, whose output the C++ standard fixes: the same questions on every platform).
std::vector<int> draw_gsm8k_questions(int total, int count, uint64_t seed);

// One greedy completion of a prompt; error set when the source failed (the run then fails too).
struct Completion {
  std::string text;
  int64_t completion_tokens = 0;
  std::string error;
};
// Thread-safe: called from `concurrency` threads at once.
using CompletionSource = std::function<Completion(const std::string& prompt, int max_tokens)>;

struct Gsm8kRunOptions {
  std::string data;
  int n = 50;
  uint64_t seed = 42;
  int concurrency = 1;
  int max_tokens = 512;
};

// Asks the drawn questions through `source` with a progress bar; returns the JSON report (accuracy,
// latencies, every question with its answer). `target` (e.g. the model or URL) is merged into it.
nlohmann::json run_gsm8k(const Gsm8kRunOptions& options, const CompletionSource& source, const nlohmann::json& target);

}  // namespace uberlm
