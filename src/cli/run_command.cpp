// `uberlm run`: generate text from a prompt and stream it to stdout.
#include <algorithm>
#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "model/gguf_model.h"
#include "model/model.h"
#include "model/quantize.h"
#include "runtime/engine_stack.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/gguf_tokenizer.h"

namespace uberlm::cli {

namespace {

struct RunOptions {
  std::string model = default_model_dir();
  std::string prompt;
  bool chat = false;
  std::string chat_template;  // a Jinja file overriding the model's template
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
  bool deterministic = false;
  bool small_m_gemm = true;
  DecodePath decode_path = DecodePath::Unfused;
};

// The tokenizer and prompt conventions of a model: a directory's tokenizer.json and chat template, or a
// GGUF file's metadata (its BOS rule and its tokenizer.chat_template).
struct PromptFormat {
  std::unique_ptr<BpeTokenizer> tokenizer;
  std::optional<int> bos_id;  // prepended to a plain prompt when set; a chat template writes its own
  std::optional<ChatTemplate> chat_template;
};

ChatTemplate gguf_chat_template(const GgufTokenizer& gguf, const std::filesystem::path& model_path,
                                const std::string& override_file) {
  JsonValue special_tokens = JsonValue::object();
  if (gguf.bos_id) special_tokens["bos_token"] = std::string(gguf.tokenizer->token_text(*gguf.bos_id));
  if (gguf.eos_id) special_tokens["eos_token"] = std::string(gguf.tokenizer->token_text(*gguf.eos_id));
  if (!override_file.empty()) {
    std::ifstream file(override_file, std::ios::binary);
    if (!file) fail("cannot read the chat template {}", override_file);
    return ChatTemplate(std::string(std::istreambuf_iterator<char>(file), {}), override_file, special_tokens);
  }
  if (gguf.chat_template.empty()) {
    spdlog::warn("{}: no tokenizer.chat_template: chats are rendered as ChatML", model_path.string());
    return ChatTemplate::chatml();
  }
  return ChatTemplate(gguf.chat_template, model_path.string() + " tokenizer.chat_template", special_tokens);
}

PromptFormat load_prompt_format(const std::filesystem::path& model_path, bool chat, const std::string& override_file) {
  PromptFormat format;
  if (!is_gguf_path(model_path)) {
    format.tokenizer = BpeTokenizer::load(model_path / "tokenizer.json");
    if (chat) format.chat_template = ChatTemplate::load(model_path, override_file);
    return format;
  }
  GgufTokenizer gguf = load_gguf_tokenizer(*GgufFile::open(model_path));
  if (chat) format.chat_template = gguf_chat_template(gguf, model_path, override_file);
  format.tokenizer = std::move(gguf.tokenizer);
  if (gguf.add_bos) format.bos_id = gguf.bos_id;
  return format;
}

std::string chat_prompt(const ChatTemplate& chat_template, const std::string& user_text) {
  ChatTemplateInputs inputs;
  inputs.messages = JsonValue::array({{{"role", "user"}, {"content", user_text}}});
  return chat_template.render(inputs);
}

void run(const RunOptions& options) {
  auto model = Model::load(options.model);
  if (options.quantize == "nvfp4") quantize_model_at_load(*model);
  if (!options.chat_template.empty() && !options.chat) fail("run: --chat-template needs --chat");
  PromptFormat format = load_prompt_format(options.model, options.chat, options.chat_template);
  const BpeTokenizer& tokenizer = *format.tokenizer;
  const std::string text = options.chat ? chat_prompt(*format.chat_template, options.prompt) : options.prompt;
  EngineRequest request;
  if (format.bos_id && !options.chat) request.prompt.push_back(*format.bos_id);
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
  stack_options.deterministic = options.deterministic;
  stack_options.small_m_gemm = options.small_m_gemm;
  stack_options.decode_path = options.decode_path;
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
  cmd->add_flag("--chat", options->chat, "Render the prompt as a user turn with the model's chat template");
  cmd->add_option("--chat-template", options->chat_template, "With --chat: a Jinja chat template file to use instead of the model's");
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
  add_deterministic_option(*cmd, options->deterministic);
  add_small_m_gemm_option(*cmd, options->small_m_gemm);
  add_decode_path_option(*cmd, options->decode_path);
  cmd->callback([options] { run(*options); });
}

}  // namespace uberlm::cli
