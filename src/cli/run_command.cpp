// `uberlm run`: generate text from a prompt and stream it to stdout.
#include <algorithm>
#include <cstdio>

#include <fmt/format.h>

#include "cli/commands.h"
#include "model/gguf_model.h"
#include "model/model.h"
#include "model/quantize.h"
#include "runtime/engine_stack.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat.h"
#include "tokenizer/gguf_tokenizer.h"

namespace uberlm::cli {

namespace {

struct RunOptions {
  std::string model = default_model_dir();
  std::string prompt;
  bool chat = false;
  int max_tokens = 128;
  float temperature = 0.0f;
  float top_p = 1.0f;
  int top_k = 0;
  uint64_t seed = 0;
  std::string quantize;  // "nvfp4": quantise the bf16 linear layers at load
  std::string device = "auto";
  int tensor_parallel = 1;
  std::string tuning_table;
  bool strict = false;
};

// The tokenizer and prompt conventions of a model: a directory's tokenizer.json, or a GGUF file's
// metadata (its BOS rule and the default system message its ChatML template writes).
struct PromptFormat {
  std::unique_ptr<BpeTokenizer> tokenizer;
  std::optional<int> bos_id;  // prepended to the prompt when set
  std::optional<std::string> default_system_prompt;
};

PromptFormat load_prompt_format(const std::filesystem::path& model_path) {
  PromptFormat format;
  if (!is_gguf_path(model_path)) {
    format.tokenizer = BpeTokenizer::load(model_path / "tokenizer.json");
    return format;
  }
  GgufTokenizer gguf = load_gguf_tokenizer(*GgufFile::open(model_path));
  format.tokenizer = std::move(gguf.tokenizer);
  if (gguf.add_bos) format.bos_id = gguf.bos_id;
  format.default_system_prompt = chatml_default_system_prompt(gguf.chat_template);
  return format;
}

void run(const RunOptions& options) {
  auto model = Model::load(options.model);
  if (options.quantize == "nvfp4") quantize_model_at_load(*model);
  PromptFormat format = load_prompt_format(options.model);
  const BpeTokenizer& tokenizer = *format.tokenizer;
  std::vector<ChatMessage> messages;
  if (format.default_system_prompt) messages.push_back({"system", *format.default_system_prompt});
  messages.push_back({"user", options.prompt});
  const std::string text = options.chat ? render_chatml(messages, /*add_generation_prompt=*/true) : options.prompt;
  EngineRequest request;
  if (format.bos_id) request.prompt.push_back(*format.bos_id);
  for (int id : tokenizer.encode(text)) request.prompt.push_back(id);
  request.max_tokens = options.max_tokens;
  request.sampling = {
      .temperature = options.temperature, .top_k = options.top_k, .top_p = options.top_p, .seed = options.seed};
  request.stop_token_ids = model->stop_token_ids;
  if (options.chat) {
    if (auto im_end = tokenizer.token_id("<|im_end|>")) request.stop_token_ids.push_back(*im_end);
  }

  EngineStackOptions stack_options;
  stack_options.device = options.device;
  stack_options.tensor_parallel = options.tensor_parallel;
  stack_options.max_num_seqs = 1;
  stack_options.max_model_len = std::max<int64_t>(default_max_model_len(model->config),
                                                  static_cast<int64_t>(request.prompt.size()) + options.max_tokens);
  stack_options.kv_cache_tokens = stack_options.max_model_len;
  stack_options.loop_thread = false;
  stack_options.tuning_table = options.tuning_table;
  stack_options.strict = options.strict;
  EngineStack stack(*model, &tokenizer, stack_options);

  if (!options.chat) std::fputs(options.prompt.c_str(), stdout);
  const GenerationStats stats = generate(stack.engine(), std::move(request), [](const StreamEvent& event) {
    std::fputs(event.text.c_str(), stdout);
    std::fflush(stdout);
  });
  std::fputs("\n", stdout);
  std::fflush(stdout);
  const double decode_rate = stats.decode_seconds > 0 ? (stats.generated_tokens - 1) / stats.decode_seconds : 0.0;
  const double prefill_rate = stats.prefill_seconds > 0 ? stats.prompt_tokens / stats.prefill_seconds : 0.0;
  std::fputs(fmt::format("[{}] prompt {} tokens ({:.1f} tok/s), generated {} tokens, {:.1f} tok/s decode\n",
                         stack.backend().name(), stats.prompt_tokens, prefill_rate, stats.generated_tokens, decode_rate)
                 .c_str(),
             stderr);
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto options = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Generate text from a prompt");
  cmd->add_option("--model", options->model, "Checkpoint directory or .gguf file")->capture_default_str();
  cmd->add_option("--prompt", options->prompt, "Prompt text")->required();
  cmd->add_flag("--chat", options->chat, "Wrap the prompt as a ChatML user turn");
  cmd->add_option("--max-tokens", options->max_tokens, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temperature", options->temperature, "0 = greedy")->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-p", options->top_p, "Nucleus sampling mass")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--top-k", options->top_k, "Keep the k most likely tokens (0 = all)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--seed", options->seed, "Sampling seed");
  cmd->add_option("--device", options->device, "cpu, cuda, or auto (cuda when a GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  cmd->add_option("--quantize", options->quantize, "Quantise bf16 linear layers at load")->check(CLI::IsMember({"nvfp4"}));
  cmd->add_option("--tensor-parallel", options->tensor_parallel,
                  "Shard the model over N GPUs (NCCL), or N CPU rank threads with --device cpu")
      ->check(CLI::Range(1, 64))->capture_default_str();
  add_tuning_options(*cmd, options->tuning_table, options->strict);
  cmd->callback([options] { run(*options); });
}

}  // namespace uberlm::cli
