// `uberlm serve`: the OpenAI-compatible server over an EngineStack (runtime/engine_stack.h): one Engine loop
// drives the CPU or the CUDA backend; on CUDA the scheduler hands out the blocks of a paged KV pool sized
// from free GPU memory. With --shape,
// the CUDA backend runs a named model shape on random weights made on the GPU (for load tests of big
// shapes without their checkpoints), with the tokenizer of another model: sampled ids that tokenizer
// lacks decode to no text, as Hugging Face `tokenizers` decodes them, and still count as tokens.
#include <algorithm>
#include <csignal>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/engine_stack.h"
#include "server/openai_server.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"

namespace uberlm::cli {

namespace {

struct ServeOptions {
  std::string model = default_model_dir();
  std::string shape;             // synthetic weights of this shape instead of --model (CUDA only)
  std::string weights = "nvfp4";  // with --shape: linear layers in nvfp4 or bf16
  std::string tokenizer;         // with --shape: a folder with tokenizer.json
  std::string chat_template;     // a Jinja file overriding the model's chat template
  uint64_t seed = 1;             // with --shape: the random weights' seed
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string device = "auto";
  double gpu_memory_utilization = 0.9;
  int max_num_seqs = 16;
  int64_t max_model_len = 0;
  int64_t max_num_batched_tokens = 0;
  int64_t kv_cache_tokens = 0;
  int max_waiting = 256;
  int max_connections = 1024;
  std::string api_key;
  int tensor_parallel = 1;
  std::string tuning_table;
  bool strict = false;
  bool deterministic = false;
  bool small_m_gemm = true;
  DecodePath decode_path = DecodePath::Unfused;
  bool enable_prefix_caching = false;
  int prefix_cache_snapshots = 64;
};

OpenAiServer* g_server = nullptr;

void request_stop(int) {
  if (g_server != nullptr) g_server->stop();
}

EngineStackOptions stack_options(const ServeOptions& options) {
  EngineStackOptions stack;
  stack.device = options.device;
  stack.tensor_parallel = options.tensor_parallel;
  stack.max_num_seqs = options.max_num_seqs;
  stack.max_model_len = options.max_model_len;
  stack.max_num_batched_tokens = options.max_num_batched_tokens;
  stack.kv_cache_tokens = options.kv_cache_tokens;
  stack.gpu_memory_utilization = options.gpu_memory_utilization;
  stack.max_waiting = options.max_waiting;
  stack.tuning_table = options.tuning_table;
  stack.strict = options.strict;
  stack.deterministic = options.deterministic;
  stack.small_m_gemm = options.small_m_gemm;
  stack.decode_path = options.decode_path;
  stack.enable_prefix_caching = options.enable_prefix_caching;
  stack.prefix_cache_snapshots = options.prefix_cache_snapshots;
  return stack;
}

void serve(const ServeOptions& options) {
  std::unique_ptr<Model> model;  // null with --shape
  std::unique_ptr<EngineStack> stack;
  std::filesystem::path tokenizer_dir = options.tokenizer;
  std::string name = options.served_model_name;
  std::vector<int> stop_token_ids;
  if (!options.shape.empty()) {
    if (options.tokenizer.empty()) fail("serve --shape {}: --tokenizer DIR is required", options.shape);
  } else {
    model = Model::load(options.model);
    if (tokenizer_dir.empty()) tokenizer_dir = options.model;
    if (name.empty()) name = std::filesystem::path(options.model).lexically_normal().filename().string();
    stop_token_ids = model->stop_token_ids;
  }
  const std::unique_ptr<BpeTokenizer> tokenizer = BpeTokenizer::load(tokenizer_dir / "tokenizer.json");
  const ChatTemplate chat_template = ChatTemplate::load(tokenizer_dir, options.chat_template);
  spdlog::info("chat template: {}", chat_template.origin());
  if (model) {
    stack = std::make_unique<EngineStack>(*model, tokenizer.get(), stack_options(options));
  } else {
#ifdef UBERLM_WITH_CUDA
    const SyntheticFormat format = options.weights == "bf16" ? SyntheticFormat::Bf16 : SyntheticFormat::Nvfp4;
    stack = std::make_unique<EngineStack>(shape_config(options.shape), format, options.seed, tokenizer.get(),
                                          stack_options(options));
    spdlog::info("cuda backend, {} shape with random {} weights (seed {}): {}", options.shape, options.weights,
                 options.seed, stack->gpu_backend()->memory_summary());
    if (name.empty()) name = options.shape;
#else
    fail("serve --shape: synthetic weights are made on the GPU, and this binary was built without CUDA");
#endif
  }
  if (name.empty()) name = "default";

  ServerConfig server_config;
  server_config.http.host = options.host;
  server_config.http.port = options.port;
  server_config.http.max_connections = options.max_connections;
  server_config.model_name = name;
  server_config.api_key = options.api_key;
  server_config.stop_token_ids = stop_token_ids;
  OpenAiServer server(stack->engine(), *tokenizer, chat_template, stack->metrics(), server_config);
  const int port = server.bind();
  g_server = &server;
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  const SchedulerConfig& scheduler = stack->config().scheduler;
  spdlog::info("serving '{}' on http://{}:{} ({} backend, max-num-seqs {}, max-model-len {}, {} KV blocks of {} tokens)",
               name, options.host, port, stack->backend().name(), scheduler.max_num_seqs, scheduler.max_model_len,
               scheduler.num_kv_blocks, kKvBlockSize);
  server.serve();
  g_server = nullptr;
  spdlog::info("server stopped");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  cmd->add_option("--model", options->model, "Checkpoint directory (with tokenizer.json)")->capture_default_str();
  cmd->add_option("--shape", options->shape, "Serve this shape with random weights made on the GPU instead of --model")
      ->check(CLI::IsMember({"qwen3.5-27b", "qwen3.5-9b", "default"}));
  cmd->add_option("--weights", options->weights, "With --shape: linear layers in nvfp4 or bf16")
      ->check(CLI::IsMember({"nvfp4", "bf16"}))->capture_default_str();
  cmd->add_option("--tokenizer", options->tokenizer,
                  "Folder with tokenizer.json (default: --model's); with --shape, ids it lacks decode to no text");
  cmd->add_option("--chat-template", options->chat_template,
                  "A Jinja chat template file to use instead of the model's (chat_template.jinja or tokenizer_config.json)");
  cmd->add_option("--seed", options->seed, "With --shape: seed of the random weights")->capture_default_str();
  cmd->add_option("--device", options->device, "cpu, cuda, or auto (cuda when a GPU is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  cmd->add_option("--gpu-memory-utilization", options->gpu_memory_utilization,
                  "CUDA: fraction of the GPU's memory this server may hold; the KV pool gets what weights, states "
                  "and activations leave")
      ->check(CLI::Range(0.05, 1.0))->capture_default_str();
  cmd->add_option("--served-model-name", options->served_model_name, "Model id clients send (default: the folder name)");
  cmd->add_option("--host", options->host, "Address to bind (loopback unless told otherwise)")->capture_default_str();
  cmd->add_option("--port", options->port, "Port (0: any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--max-num-seqs", options->max_num_seqs, "Sequences decoded together")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--max-model-len", options->max_model_len, "Prompt + generated tokens per sequence (default on a GPU: the model's max_position_embeddings, lowered at load to what the KV cache holds; on the CPU: the model's, at most 8192)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 24));
  cmd->add_option("--max-num-batched-tokens", options->max_num_batched_tokens, "Token budget of one engine step: prompts are prefilled in chunks of it (default: 4096 on a GPU, 512 on the CPU)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_option("--kv-cache-tokens", options->kv_cache_tokens, "KV cache capacity in tokens (default: CPU max-num-seqs x max-model-len, CUDA from --gpu-memory-utilization)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 32));
  cmd->add_option("--max-waiting", options->max_waiting, "Queued requests beyond max-num-seqs before 503")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_flag("--enable-prefix-caching", options->enable_prefix_caching,
               "Reuse the KV blocks and Gated DeltaNet states of earlier prompts' prefixes");
  cmd->add_option("--prefix-cache-snapshots", options->prefix_cache_snapshots,
                  "With --enable-prefix-caching: cached prefixes kept at most (each holds the model's recurrent states)")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--max-connections", options->max_connections,
                  "Open connections beyond which a new one is answered 503 and closed")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--api-key", options->api_key, "Require 'Authorization: Bearer KEY' on /v1/* and /metrics");
  cmd->add_option("--tensor-parallel", options->tensor_parallel,
                  "Shard the model over N GPUs (NCCL), or N CPU rank threads with --device cpu")
      ->check(CLI::Range(1, 64))->capture_default_str();
  add_tuning_options(*cmd, options->tuning_table, options->strict);
  add_deterministic_option(*cmd, options->deterministic);
  add_small_m_gemm_option(*cmd, options->small_m_gemm);
  add_decode_path_option(*cmd, options->decode_path);
  cmd->callback([options] { serve(*options); });
}

}  // namespace uberlm::cli
