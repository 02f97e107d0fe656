// `uberlm eval gsm8k`: GSM8K accuracy of a model run in this process (--model) or behind an
// OpenAI-compatible /v1/completions endpoint (--url, ours or any other). eval/gsm8k.h has the prompt,
// the seeded question draw and the scoring.
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "eval/completion_sources.h"
#include "eval/gsm8k.h"
#include "model/model.h"
#include "runtime/engine_stack.h"

namespace uberlm::cli {

namespace {

using json = nlohmann::json;

struct Gsm8kOptions {
  Gsm8kRunOptions run{.data = UBERLM_GSM8K_TEST, .concurrency = 8};
  std::string preset;
  std::string url;
  std::string model_id;  // with --url; empty: the first id of GET /v1/models
  std::string api_key;
  std::string model = default_model_dir();  // without --url
  std::string device = "auto";
  std::string tuning_table;
  bool strict = false;
  std::string json_path;
};

// The reference system's gates: a quick sanity run and the 50-question gate, both with seed 42 (the
// questions each draws are listed in data/gsm8k/README.md).
void apply_preset(Gsm8kOptions& options) {
  if (options.preset.empty()) return;
  options.run.n = options.preset == "sanity" ? 8 : 50;
  options.run.seed = 42;
}

json run_against_server(const Gsm8kOptions& options) {
  const std::string model_id = options.model_id.empty() ? served_model_id(options.url, options.api_key) : options.model_id;
  return run_gsm8k(options.run, openai_completion_source(options.url, model_id, options.api_key),
                   {{"url", options.url}, {"model", model_id}});
}

json run_in_process(const Gsm8kOptions& options) {
  auto model = Model::load(options.model);
  auto tokenizer = BpeTokenizer::load(std::filesystem::path(options.model) / "tokenizer.json");
  EngineStackOptions stack_options;
  stack_options.device = options.device;
  stack_options.max_num_seqs = options.run.concurrency;
  stack_options.max_model_len = default_max_model_len(model->config);
  stack_options.tuning_table = options.tuning_table;
  stack_options.strict = options.strict;
  EngineStack stack(*model, tokenizer.get(), stack_options);
  return run_gsm8k(options.run, engine_completion_source(stack.engine(), *tokenizer, model->stop_token_ids),
                   {{"model", options.model}, {"backend", stack.backend().name()}});
}

void run(Gsm8kOptions options) {
  apply_preset(options);
  const json report = options.url.empty() ? run_in_process(options) : run_against_server(options);
  const auto& latency = report["latency_seconds"];
  fmt::print("gsm8k: accuracy {:.4f} ({}/{}), {} errors, wall {:.2f} s, latency mean {:.3f} s p50 {:.3f} s p90 {:.3f} s, "
             "{:.1f} generated tokens/s\n",
             report["accuracy"].get<double>(), report["correct"].get<int>(), report["n"].get<int>(),
             report["errors"].get<int>(), report["wall_seconds"].get<double>(), latency["mean"].get<double>(),
             latency["p50"].get<double>(), latency["p90"].get<double>(), report["tokens_per_second"].get<double>());
  if (!options.json_path.empty()) {
    std::ofstream out(options.json_path);
    if (!(out << report.dump(2) << "\n")) fail("eval gsm8k: cannot write {}", options.json_path);
  }
  const int errors = report["errors"].get<int>();
  if (errors == 0) return;
  for (const json& row : report["questions"]) {
    if (row.contains("error")) {
      fail("eval gsm8k: {} of {} requests failed (first: {})", errors, report["n"].get<int>(),
           row["error"].get<std::string>());
    }
  }
}

}  // namespace

void add_eval_gsm8k_command(CLI::App& eval) {
  auto options = std::make_shared<Gsm8kOptions>();
  CLI::App* cmd = eval.add_subcommand("gsm8k", "GSM8K accuracy of a model in this process, or of a server (--url)");
  cmd->add_option("--model", options->model, "Checkpoint directory run in this process (without --url)")
      ->capture_default_str();
  cmd->add_option("--device", options->device, "With --model: cpu, cuda, or auto (cuda when a GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  add_tuning_options(*cmd, options->tuning_table, options->strict);
  cmd->add_option("--url", options->url, "Ask an OpenAI-compatible server instead, e.g. http://127.0.0.1:8000");
  cmd->add_option("--model-id", options->model_id, "With --url: the model id to send (default: the server's first)");
  cmd->add_option("--api-key", options->api_key, "With --url: bearer token");
  cmd->add_option("--preset", options->preset, "sanity: --n 8 --seed 42; gate: --n 50 --seed 42")
      ->check(CLI::IsMember({"sanity", "gate"}));
  cmd->add_option("--n", options->run.n, "Questions to ask")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--seed", options->run.seed, "Seed of the question draw")->capture_default_str();
  cmd->add_option("--concurrency", options->run.concurrency, "Requests in flight (in process: the batch size)")
      ->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--data", options->run.data, "GSM8K JSONL (question, answer)")->capture_default_str();
  cmd->add_option("--max-tokens", options->run.max_tokens, "Tokens to generate per answer")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--json", options->json_path, "Also write the JSON report here");
  cmd->callback([options] { run(*options); });
}

}  // namespace uberlm::cli
