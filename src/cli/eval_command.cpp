// `uberlm eval gsm8k`: GSM8K accuracy of a model behind an OpenAI-compatible /v1/completions
// endpoint (ours or any other). Questions are drawn with the seed, asked greedily with the prompt
//   "Q: <question>\nA: Let me solve this step by step.\n"
// and scored by the number after '####' in the answer text, else its last number.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <regex>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "eval/gsm8k.h"
#include "core/error.h"

namespace uberlm::cli {

namespace {

using json = nlohmann::json;

struct Gsm8kOptions {
  std::string url;
  std::string data = UBERLM_GSM8K_TEST;
  std::string model;  // empty: the first id of GET /v1/models
  std::string api_key;
  int n = 50;
  uint64_t seed = 42;
  int concurrency = 1;
  int max_tokens = 512;
  std::string json_path;
};

struct Question {
  int index = 0;  // line in the data file, from 0
  std::string question;
  std::string gold;
};

struct Outcome {
  std::string text;
  std::string predicted;
  bool correct = false;
  double latency_seconds = 0.0;
  int64_t completion_tokens = 0;
  std::string error;
};

std::vector<Question> read_questions(const std::string& path) {
  std::ifstream file(path);
  if (!file) fail("eval gsm8k: cannot open data file {}", path);
  std::vector<Question> questions;
  std::string line;
  for (int number = 1; std::getline(file, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json row;
    try {
      row = json::parse(line);
    } catch (const json::exception& error) {
      fail("eval gsm8k: {} line {}: invalid JSON: {}", path, number, error.what());
    }
    if (!row.is_object() || !row.contains("question") || !row["question"].is_string() || !row.contains("answer") ||
        !row["answer"].is_string()) {
      fail("eval gsm8k: {} line {}: expected string fields 'question' and 'answer'", path, number);
    }
    const std::string answer = row["answer"].get<std::string>();
    const size_t mark = answer.find("####");
    if (mark == std::string::npos) fail("eval gsm8k: {} line {}: the answer has no '####'", path, number);
    questions.push_back({static_cast<int>(questions.size()), row["question"].get<std::string>(), ""});
    questions.back().gold = answer.substr(mark + 4);
  }
  if (questions.empty()) fail("eval gsm8k: {} holds no questions", path);
  return questions;
}

// "1,234.50" -> "1234.5": commas dropped, trailing fractional zeros and a trailing '.' removed.
std::string normalize_number(std::string number) {
  number.erase(std::remove(number.begin(), number.end(), ','), number.end());
  if (number.find('.') != std::string::npos) {
    while (!number.empty() && number.back() == '0') number.pop_back();
    if (!number.empty() && number.back() == '.') number.pop_back();
  }
  if (number == "-0" || number.empty()) number = "0";
  return number;
}

const std::regex& number_pattern() {
  static const std::regex pattern(R"(-?[0-9][0-9,]*(\.[0-9]+)?)");
  return pattern;
}

// The number after the first '####', else the last number of the text; "" when there is none.
std::string extract_answer(const std::string& text) {
  const size_t mark = text.find("####");
  std::smatch match;
  if (mark != std::string::npos) {
    const std::string after = text.substr(mark + 4);
    if (std::regex_search(after, match, number_pattern())) return normalize_number(match.str());
  }
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), number_pattern()); it != std::sregex_iterator(); ++it) {
    last = it->str();
  }
  return last.empty() ? "" : normalize_number(last);
}

// `count` distinct question indices drawn with the seed (a partial Fisher-Yates shuffle).
std::vector<int> draw(int total, int count, uint64_t seed) {
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

httplib::Headers auth_headers(const std::string& api_key) {
  if (api_key.empty()) return {};
  return {{"Authorization", "Bearer " + api_key}};
}

std::unique_ptr<httplib::Client> make_client(const std::string& url) {
  auto client = std::make_unique<httplib::Client>(url);
  client->set_connection_timeout(10);
  client->set_read_timeout(1800);
  client->set_write_timeout(60);
  return client;
}

std::string served_model(const std::string& url, const std::string& api_key) {
  auto client = make_client(url);
  auto res = client->Get("/v1/models", auth_headers(api_key));
  if (!res) fail("eval gsm8k: GET {}/v1/models failed: {}", url, httplib::to_string(res.error()));
  if (res->status != 200) fail("eval gsm8k: GET {}/v1/models: HTTP {}: {}", url, res->status, res->body);
  try {
    return json::parse(res->body).at("data").at(0).at("id").get<std::string>();
  } catch (const json::exception& error) {
    fail("eval gsm8k: {}/v1/models: unexpected reply ({})", url, error.what());
  }
}

Outcome ask(httplib::Client& client, const Gsm8kOptions& options, const std::string& model, const Question& question) {
  Outcome outcome;
  const json body = {{"model", model},
                     {"prompt", gsm8k_prompt(question.question)},
                     {"temperature", 0},
                     {"max_tokens", options.max_tokens}};
  const auto start = std::chrono::steady_clock::now();
  auto res = client.Post("/v1/completions", auth_headers(options.api_key), body.dump(), "application/json");
  outcome.latency_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!res) {
    outcome.error = "request failed: " + httplib::to_string(res.error());
    return outcome;
  }
  if (res->status != 200) {
    outcome.error = fmt::format("HTTP {}: {}", res->status, res->body);
    return outcome;
  }
  try {
    const json reply = json::parse(res->body);
    outcome.text = reply.at("choices").at(0).at("text").get<std::string>();
    outcome.completion_tokens = reply.at("usage").at("completion_tokens").get<int64_t>();
  } catch (const json::exception& error) {
    outcome.error = fmt::format("unexpected reply ({})", error.what());
    return outcome;
  }
  outcome.predicted = extract_answer(outcome.text);
  outcome.correct = !outcome.predicted.empty() && outcome.predicted == normalize_number(extract_answer(question.gold));
  return outcome;
}

void print_progress(int done, int total, int correct, int errors) {
  constexpr int kWidth = 30;
  const int filled = total > 0 ? done * kWidth / total : kWidth;
  std::fprintf(stderr, "\r[%s%s] %d/%d  accuracy %.3f  errors %d", std::string(filled, '#').c_str(),
               std::string(kWidth - filled, '.').c_str(), done, total, done > 0 ? static_cast<double>(correct) / done : 0.0,
               errors);
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

double percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t index = std::min(values.size() - 1, static_cast<size_t>(fraction * (values.size() - 1) + 0.5));
  return values[index];
}

void run_gsm8k(const Gsm8kOptions& options) {
  std::vector<Question> all = read_questions(options.data);
  const int n = std::min<int>(options.n, static_cast<int>(all.size()));
  const std::vector<int> picked = draw(static_cast<int>(all.size()), n, options.seed);
  const std::string model = options.model.empty() ? served_model(options.url, options.api_key) : options.model;

  std::vector<Outcome> outcomes(n);
  std::atomic<int> next{0};
  std::mutex progress_mutex;
  int done = 0, correct = 0, errors = 0;
  print_progress(0, n, 0, 0);
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> workers;
  for (int w = 0; w < std::min(options.concurrency, n); ++w) {
    workers.emplace_back([&] {
      auto client = make_client(options.url);
      for (int i = next++; i < n; i = next++) {
        outcomes[i] = ask(*client, options, model, all[picked[i]]);
        std::lock_guard lock(progress_mutex);
        ++done;
        correct += outcomes[i].correct ? 1 : 0;
        errors += outcomes[i].error.empty() ? 0 : 1;
        print_progress(done, n, correct, errors);
      }
    });
  }
  for (std::thread& worker : workers) worker.join();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::vector<double> latencies;
  int64_t completion_tokens = 0;
  json rows = json::array();
  for (int i = 0; i < n; ++i) {
    const Question& q = all[picked[i]];
    const Outcome& o = outcomes[i];
    latencies.push_back(o.latency_seconds);
    completion_tokens += o.completion_tokens;
    json row = {{"index", q.index},       {"question", q.question},   {"gold", normalize_number(extract_answer(q.gold))},
                {"predicted", o.predicted}, {"correct", o.correct}, {"latency_seconds", o.latency_seconds},
                {"completion_tokens", o.completion_tokens}, {"text", o.text}};
    if (!o.error.empty()) row["error"] = o.error;
    rows.push_back(row);
  }
  const double accuracy = n > 0 ? static_cast<double>(correct) / n : 0.0;
  double mean = 0.0;
  for (double l : latencies) mean += l / std::max(n, 1);
  json report = {{"task", "gsm8k"},
                 {"url", options.url},
                 {"model", model},
                 {"data", options.data},
                 {"n", n},
                 {"seed", options.seed},
                 {"concurrency", options.concurrency},
                 {"max_tokens", options.max_tokens},
                 {"correct", correct},
                 {"errors", errors},
                 {"accuracy", accuracy},
                 {"wall_seconds", wall},
                 {"completion_tokens", completion_tokens},
                 {"tokens_per_second", wall > 0 ? completion_tokens / wall : 0.0},
                 {"latency_seconds",
                  {{"mean", mean},
                   {"p50", percentile(latencies, 0.5)},
                   {"p90", percentile(latencies, 0.9)},
                   {"max", percentile(latencies, 1.0)}}},
                 {"questions", rows}};
  fmt::print("gsm8k: accuracy {:.4f} ({}/{}), {} errors, wall {:.2f} s, latency mean {:.3f} s p50 {:.3f} s p90 {:.3f} s, "
             "{:.1f} generated tokens/s\n",
             accuracy, correct, n, errors, wall, mean, percentile(latencies, 0.5), percentile(latencies, 0.9),
             wall > 0 ? completion_tokens / wall : 0.0);
  if (!options.json_path.empty()) {
    std::ofstream out(options.json_path);
    if (!out) fail("eval gsm8k: cannot write {}", options.json_path);
    out << report.dump(2) << "\n";
  }
  if (errors > 0) fail("eval gsm8k: {} of {} requests failed (first: {})", errors, n,
                       std::find_if(outcomes.begin(), outcomes.end(), [](const Outcome& o) { return !o.error.empty(); })->error);
}

}  // namespace

void add_eval_gsm8k_command(CLI::App& eval) {
  auto options = std::make_shared<Gsm8kOptions>();
  CLI::App* cmd = eval.add_subcommand("gsm8k", "GSM8K accuracy through an OpenAI-compatible server's /v1/completions");
  cmd->add_option("--url", options->url, "Server base URL, e.g. http://127.0.0.1:8000")->required();
  cmd->add_option("--n", options->n, "Questions to ask")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--seed", options->seed, "Seed of the question draw")->capture_default_str();
  cmd->add_option("--concurrency", options->concurrency, "Requests in flight")->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--data", options->data, "GSM8K JSONL (question, answer)")->capture_default_str();
  cmd->add_option("--model", options->model, "Model id to send (default: the server's first)");
  cmd->add_option("--api-key", options->api_key, "Bearer token");
  cmd->add_option("--max-tokens", options->max_tokens, "Tokens to generate per answer")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--json", options->json_path, "Also write the JSON report here");
  cmd->callback([options] { run_gsm8k(*options); });
}

}  // namespace uberlm::cli
