// `uberlm serve`: the OpenAI-compatible server on the CPU backend (the CUDA backend plugs into the
// same Engine once it implements Backend).
#include <csignal>
#include <thread>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/cpu_backend.h"
#include "runtime/engine.h"
#include "server/openai_server.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm::cli {

namespace {

struct ServeOptions {
  std::string model = default_model_dir();
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  int max_num_seqs = 16;
  int64_t max_model_len = 0;
  int64_t max_num_batched_tokens = 512;
  int64_t kv_cache_tokens = 0;
  int max_waiting = 256;
  std::string api_key;
};

OpenAiServer* g_server = nullptr;

void request_stop(int) {
  if (g_server != nullptr) g_server->stop();
}

void serve(const ServeOptions& options) {
  auto model = Model::load(options.model);
  auto tokenizer = BpeTokenizer::load(std::filesystem::path(options.model) / "tokenizer.json");
  if (tokenizer->vocab_size() > model->config.vocab_size) {
    fail("serve: {} has {} tokenizer ids but the model's vocab_size is {}", options.model, tokenizer->vocab_size(),
         model->config.vocab_size);
  }
  const int64_t context = model->config.max_position_embeddings > 0 ? model->config.max_position_embeddings : 4096;
  EngineConfig config;
  config.scheduler.max_num_seqs = options.max_num_seqs;
  config.scheduler.max_model_len = options.max_model_len > 0 ? options.max_model_len : std::min<int64_t>(context, 8192);
  config.scheduler.max_num_batched_tokens = options.max_num_batched_tokens;
  config.scheduler.num_slots = options.max_num_seqs;
  // Default KV pool: every running sequence at full length, so preemption only happens when asked for.
  const int64_t kv_tokens =
      options.kv_cache_tokens > 0 ? options.kv_cache_tokens : options.max_num_seqs * config.scheduler.max_model_len;
  config.scheduler.num_kv_blocks = (kv_tokens + config.scheduler.block_size - 1) / config.scheduler.block_size;
  config.max_waiting = options.max_waiting;

  CpuBackend backend(*model, options.max_num_seqs);
  Metrics metrics;
  Engine engine(backend, *tokenizer, config, metrics);
  ServerConfig server_config;
  server_config.host = options.host;
  server_config.port = options.port;
  server_config.model_name = options.served_model_name.empty()
                                 ? std::filesystem::path(options.model).lexically_normal().filename().string()
                                 : options.served_model_name;
  if (server_config.model_name.empty()) server_config.model_name = "default";
  server_config.api_key = options.api_key;
  server_config.stop_token_ids = model->stop_token_ids;
  OpenAiServer server(engine, *tokenizer, metrics, server_config);
  const int port = server.bind();
  g_server = &server;
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  spdlog::info("serving '{}' on http://{}:{} ({} backend, max-num-seqs {}, max-model-len {}, {} KV blocks)",
               server_config.model_name, options.host, port, backend.name(), options.max_num_seqs,
               config.scheduler.max_model_len, config.scheduler.num_kv_blocks);
  server.serve();
  g_server = nullptr;
  spdlog::info("server stopped");
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  cmd->add_option("--model", options->model, "Checkpoint directory (with tokenizer.json)")->capture_default_str();
  cmd->add_option("--served-model-name", options->served_model_name, "Model id clients send (default: the folder name)");
  cmd->add_option("--host", options->host, "Address to bind (loopback unless told otherwise)")->capture_default_str();
  cmd->add_option("--port", options->port, "Port (0: any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
  cmd->add_option("--max-num-seqs", options->max_num_seqs, "Sequences decoded together")
      ->check(CLI::Range(1, 4096))->capture_default_str();
  cmd->add_option("--max-model-len", options->max_model_len, "Prompt + generated tokens per sequence (default: the model's, at most 8192)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 24));
  cmd->add_option("--max-num-batched-tokens", options->max_num_batched_tokens, "Token budget of one engine step")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  cmd->add_option("--kv-cache-tokens", options->kv_cache_tokens, "KV cache capacity in tokens (default: max-num-seqs x max-model-len)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 32));
  cmd->add_option("--max-waiting", options->max_waiting, "Queued requests beyond max-num-seqs before 503")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--api-key", options->api_key, "Require 'Authorization: Bearer KEY' on /v1/*");
  cmd->callback([options] { serve(*options); });
}

}  // namespace uberlm::cli
