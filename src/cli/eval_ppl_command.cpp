// `uberlm eval ppl`: perplexity of a model on a JSONL or text file (default: GSM8K test).
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "core/progress_bar.h"
#include "eval/gsm8k.h"
#include "model/model.h"
#include "model/quantize.h"
#include "runtime/engine_stack.h"
#include "runtime/perplexity.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm::cli {

namespace {

struct PplOptions {
  std::string model = default_model_dir();
  std::string data = UBERLM_GSM8K_TEST;
  int limit = 0;
  int max_tokens_per_document = 1024;
  int batch = 4;
  std::string json_path;
  std::string quantize;  // "nvfp4": quantise the bf16 linear layers at load
  std::string device = "cpu";
};

std::vector<std::string> read_documents(const std::string& path) {
  std::ifstream file(path);
  if (!file) fail("eval ppl: cannot open data file {}", path);
  std::vector<std::string> documents;
  std::string line;
  int line_number = 0;
  const bool jsonl = path.ends_with(".jsonl");
  if (!jsonl) {
    documents.emplace_back(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    return documents;
  }
  while (std::getline(file, line)) {
    ++line_number;
    if (line.empty()) continue;
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& error) {
      fail("eval ppl: {} line {}: invalid JSON: {}", path, line_number, error.what());
    }
    documents.push_back(gsm8k_document_text(row, path, line_number));
  }
  return documents;
}

void run_ppl(const PplOptions& options) {
  auto model = Model::load(options.model);
  if (options.quantize == "nvfp4") quantize_model_at_load(*model);
  auto tokenizer = BpeTokenizer::load(std::filesystem::path(options.model) / "tokenizer.json");
  std::vector<std::string> texts = read_documents(options.data);
  if (options.limit > 0 && static_cast<size_t>(options.limit) < texts.size()) texts.resize(options.limit);
  std::vector<std::vector<int32_t>> documents;
  int64_t truncated = 0, skipped = 0;
  for (size_t d = 0; d < texts.size(); ++d) {
    std::vector<int> ids = tokenizer->encode(texts[d], /*parse_special=*/false);
    if (ids.size() > static_cast<size_t>(options.max_tokens_per_document)) {
      spdlog::warn("eval ppl: document {} is {} tokens; scoring its first {} (--max-tokens-per-document)", d,
                   ids.size(), options.max_tokens_per_document);
      ids.resize(options.max_tokens_per_document);
      ++truncated;
    }
    if (ids.size() < 2) {
      spdlog::warn("eval ppl: document {} is {} token(s), too short to score; skipped", d, ids.size());
      ++skipped;
      continue;
    }
    documents.emplace_back(ids.begin(), ids.end());
  }
  EngineStackOptions stack_options;
  stack_options.device = options.device;
  stack_options.max_num_seqs = options.batch;
  stack_options.max_model_len = options.max_tokens_per_document;
  stack_options.max_num_batched_tokens = std::max(512, options.max_tokens_per_document);
  stack_options.kv_cache_tokens = static_cast<int64_t>(options.batch) * options.max_tokens_per_document;
  stack_options.loop_thread = false;
  EngineStack stack(*model, tokenizer.get(), stack_options);
  ProgressBar progress("eval ppl", static_cast<int64_t>(documents.size()));
  auto start = std::chrono::steady_clock::now();
  PerplexityResult result = evaluate_perplexity(stack.engine(), documents, [&] { progress.advance(); });
  progress.finish();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nlohmann::json report = {{"task", "perplexity"},
                           {"model", options.model},
                           {"data", options.data},
                           {"backend", stack.backend().name()},
                           {"documents", result.documents},
                           {"truncated_documents", truncated},
                           {"skipped_documents", skipped},
                           {"max_tokens_per_document", options.max_tokens_per_document},
                           {"scored_tokens", result.scored_tokens},
                           {"mean_nll", result.total_nll / static_cast<double>(result.scored_tokens)},
                           {"perplexity", result.perplexity()},
                           {"seconds", seconds},
                           {"tokens_per_second", (result.scored_tokens + result.documents) / seconds}};
  fmt::print("{}\n", report.dump(2));
  if (!options.json_path.empty()) {
    std::ofstream out(options.json_path);
    if (!(out << report.dump(2) << "\n")) fail("eval ppl: cannot write {}", options.json_path);
  }
}

}  // namespace

void add_eval_ppl_command(CLI::App& eval) {
  auto options = std::make_shared<PplOptions>();
  CLI::App* cmd = eval.add_subcommand("ppl", "Perplexity on a JSONL (question/answer or text) or plain-text file");
  cmd->add_option("--model", options->model, "Checkpoint directory")->capture_default_str();
  cmd->add_option("--data", options->data, "Data file")->capture_default_str();
  cmd->add_option("--limit", options->limit, "Use the first N documents (0 = all)");
  cmd->add_option("--max-tokens-per-document", options->max_tokens_per_document, "Truncate longer documents")
      ->check(CLI::Range(2, 1 << 20));
  cmd->add_option("--batch", options->batch, "Documents scored together (the engine's max-num-seqs)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--device", options->device, "cpu, cuda, or auto (cuda when a GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  cmd->add_option("--json", options->json_path, "Also write the JSON report here");
  cmd->add_option("--quantize", options->quantize, "Quantise bf16 linear layers at load")->check(CLI::IsMember({"nvfp4"}));
  cmd->callback([options] { run_ppl(*options); });
}

}  // namespace uberlm::cli
