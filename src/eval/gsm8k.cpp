#include "eval/gsm8k.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"
#include "core/progress_bar.h"

namespace uberlm {

namespace {

using json = nlohmann::json;

const std::regex& number_pattern() {
  static const std::regex pattern(R"(-?[0-9][0-9,]*(\.[0-9]+)?)");
  return pattern;
}

struct Outcome {
  Completion completion;
  std::string predicted;
  bool correct = false;
  double latency_seconds = 0.0;
};

Outcome ask(const CompletionSource& source, const Gsm8kQuestion& question, int max_tokens) {
  Outcome outcome;
  const auto start = std::chrono::steady_clock::now();
  outcome.completion = source(gsm8k_prompt(question.question), max_tokens);
  outcome.latency_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!outcome.completion.error.empty()) return outcome;
  outcome.predicted = gsm8k_answer_number(outcome.completion.text);
  outcome.correct = !outcome.predicted.empty() && outcome.predicted == question.gold;
  return outcome;
}

double percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(fraction * (values.size() - 1) + 0.5));
  return values[index];
}

// The outcomes in the order of `picked`, asked from up to `concurrency` threads.
std::vector<Outcome> ask_all(const Gsm8kRunOptions& options, const CompletionSource& source,
                             const std::vector<Gsm8kQuestion>& questions, const std::vector<int>& picked) {
  const int n = static_cast<int>(picked.size());
  std::vector<Outcome> outcomes(n);
  std::atomic<int> next{0};
  std::mutex progress_mutex;
  int done = 0, correct = 0;
  ProgressBar progress("eval gsm8k", n);
  std::vector<std::thread> workers;
  for (int w = 0; w < std::min(options.concurrency, n); ++w) {
    workers.emplace_back([&] {
      for (int i = next++; i < n; i = next++) {
        outcomes[i] = ask(source, questions[picked[i]], options.max_tokens);
        std::lock_guard lock(progress_mutex);
        ++done;
        correct += outcomes[i].correct ? 1 : 0;
        progress.advance(1, fmt::format("accuracy {:.3f}", static_cast<double>(correct) / done));
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  progress.finish();
  return outcomes;
}

}  // namespace

std::string gsm8k_document_text(const json& row, const std::string& path, int line_number) {
  if (row.contains("text") && row["text"].is_string()) return row["text"].get<std::string>();
  if (!row.contains("question") || !row["question"].is_string() || !row.contains("answer") ||
      !row["answer"].is_string()) {
    fail("{} line {}: expected string fields 'text', or 'question' and 'answer'", path, line_number);
  }
  return gsm8k_document(row["question"].get<std::string>(), row["answer"].get<std::string>());
}

std::vector<Gsm8kQuestion> read_gsm8k_questions(const std::string& path) {
  std::ifstream file(path);
  if (!file) fail("gsm8k: cannot open data file {}", path);
  std::vector<Gsm8kQuestion> questions;
  std::string line;
  for (int number = 1; std::getline(file, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json row;
    try {
      row = json::parse(line);
    } catch (const json::exception& error) {
      fail("gsm8k: {} line {}: invalid JSON: {}", path, number, error.what());
    }
    if (!row.is_object() || !row.contains("question") || !row["question"].is_string() || !row.contains("answer") ||
        !row["answer"].is_string()) {
      fail("gsm8k: {} line {}: expected string fields 'question' and 'answer'", path, number);
    }
    const std::string answer = row["answer"].get<std::string>();
    const size_t mark = answer.find("####");
    if (mark == std::string::npos) fail("gsm8k: {} line {}: the answer has no '####'", path, number);
    questions.push_back({static_cast<int>(questions.size()), row["question"].get<std::string>(),
                         gsm8k_answer_number(answer)});
  }
  if (questions.empty()) fail("gsm8k: {} holds no questions", path);
  return questions;
}

std::string normalize_gsm8k_number(std::string number) {
  number.erase(std::remove(number.begin(), number.end(), ','), number.end());
  if (number.find('.') != std::string::npos) {
    while (!number.empty() && number.back() == '0') number.pop_back();
    if (!number.empty() && number.back() == '.') number.pop_back();
  }
  if (number == "-0" || number.empty()) number = "0";
  return number;
}

std::string gsm8k_answer_number(const std::string& text) {
  const size_t mark = text.find("####");
  std::smatch match;
  if (mark != std::string::npos) {
    const std::string after = text.substr(mark + 4);
    if (std::regex_search(after, match, number_pattern())) return normalize_gsm8k_number(match.str());
  }
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), number_pattern()); it != std::sregex_iterator(); ++it) {
    last = it->str();
  }
  return last.empty() ? "" : normalize_gsm8k_number(last);
}

std::vector<int> draw_gsm8k_questions(int total, int count, uint64_t seed) {
  std::vector<int> order(total);
  for (int i = 0; i < total; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (int i = 0; i < count; ++i) {
    const int j = i + static_cast<int>(rng() % static_cast<uint64_t>(total - i));
    std::swap(order[i], order[j]);
  }
  order.resize(count);
  return order;
}

json run_gsm8k(const Gsm8kRunOptions& options, const CompletionSource& source, const json& target) {
  const std::vector<Gsm8kQuestion> questions = read_gsm8k_questions(options.data);
  const int n = std::min<int>(options.n, static_cast<int>(questions.size()));
  const std::vector<int> picked = draw_gsm8k_questions(static_cast<int>(questions.size()), n, options.seed);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<Outcome> outcomes = ask_all(options, source, questions, picked);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::vector<double> latencies;
  int64_t completion_tokens = 0;
  int correct = 0, errors = 0;
  json rows = json::array();
  for (int i = 0; i < n; ++i) {
    const Gsm8kQuestion& q = questions[picked[i]];
    const Outcome& o = outcomes[i];
    latencies.push_back(o.latency_seconds);
    completion_tokens += o.completion.completion_tokens;
    correct += o.correct ? 1 : 0;
    errors += o.completion.error.empty() ? 0 : 1;
    json row = {{"index", q.index},         {"question", q.question}, {"gold", q.gold},
                {"predicted", o.predicted}, {"correct", o.correct},   {"latency_seconds", o.latency_seconds},
                {"completion_tokens", o.completion.completion_tokens}, {"text", o.completion.text}};
    if (!o.completion.error.empty()) row["error"] = o.completion.error;
    rows.push_back(row);
  }
  double mean = 0.0;
  for (double latency : latencies) mean += latency / std::max(n, 1);
  json report = target;
  report.update({{"task", "gsm8k"},
                 {"data", options.data},
                 {"n", n},
                 {"seed", options.seed},
                 {"question_indices", picked},
                 {"concurrency", options.concurrency},
                 {"max_tokens", options.max_tokens},
                 {"correct", correct},
                 {"errors", errors},
                 {"accuracy", n > 0 ? static_cast<double>(correct) / n : 0.0},
                 {"wall_seconds", wall},
                 {"completion_tokens", completion_tokens},
                 {"tokens_per_second", wall > 0 ? completion_tokens / wall : 0.0},
                 {"latency_seconds",
                  {{"mean", mean},
                   {"p50", percentile(latencies, 0.5)},
                   {"p90", percentile(latencies, 0.9)},
                   {"max", percentile(latencies, 1.0)}}},
                 {"questions", rows}});
  return report;
}

}  // namespace uberlm
