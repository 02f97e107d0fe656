// `uberlm serve`: the OpenAI-compatible server. One Engine loop drives the CPU or the CUDA backend; on
// CUDA the scheduler hands out the blocks of a paged KV pool sized from free GPU memory. With --shape,
// the CUDA backend runs a named model shape on random weights made on the GPU (for load tests of big
// shapes without their checkpoints), with the tokenizer of another model: sampled ids that tokenizer
// lacks decode to no text, as Hugging Face `tokenizers` decodes them, and still count as tokens.
#include <algorithm>
#include <csignal>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/model_shapes.h"
#include "core/error.h"
#include "model/model.h"
#include "runtime/cuda_backend.h"
#include "runtime/cuda_tensor_parallel_backend.h"
#include "runtime/engine.h"
#include "server/openai_server.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm::cli {

namespace {

struct ServeOptions {
  std::string model = default_model_dir();
  std::string shape;             // synthetic weights of this shape instead of --model (CUDA only)
  std::string weights = "nvfp4";  // with --shape: linear layers in nvfp4 or bf16
  std::string tokenizer;         // with --shape: a folder with tokenizer.json
  uint64_t seed = 1;             // with --shape: the random weights' seed
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string device = "auto";
  double gpu_memory_utilization = 0.9;
  int max_num_seqs = 16;
  int64_t max_model_len = 0;
  int64_t max_num_batched_tokens = 512;
  int64_t kv_cache_tokens = 0;
  int max_waiting = 256;
  std::string api_key;
  int tensor_parallel = 1;
};

// What the engine serves: the backend, the tokenizer, and the model it stands for.
struct Served {
  std::unique_ptr<Model> model;  // null with --shape
  std::unique_ptr<Backend> backend;
  std::unique_ptr<BpeTokenizer> tokenizer;
  std::string name;
  std::vector<int> stop_token_ids;
};

int64_t kv_blocks_for(int64_t tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

CudaBackendOptions cuda_options(const ServeOptions& options, int64_t max_model_len, int block_size) {
  CudaBackendOptions cuda;
  cuda.max_slots = options.max_num_seqs;
  cuda.max_context = max_model_len;
  cuda.max_batch_tokens = options.max_num_batched_tokens;
  cuda.max_logit_rows = std::min<int64_t>(options.max_num_seqs, options.max_num_batched_tokens);
  cuda.scheduler_owns_kv_blocks = true;
  cuda.num_kv_blocks = options.kv_cache_tokens > 0 ? kv_blocks_for(options.kv_cache_tokens, block_size) : 0;
  cuda.gpu_memory_utilization = options.gpu_memory_utilization;
  return cuda;
}

int64_t default_max_model_len(const ModelConfig& config) {
  const int64_t context = config.max_position_embeddings > 0 ? config.max_position_embeddings : 4096;
  return std::min<int64_t>(context, 8192);
}

Served load_served(const ServeOptions& options, int64_t& max_model_len, int block_size) {
  Served served;
  std::filesystem::path tokenizer_dir;
  if (!options.shape.empty()) {
    if (options.tokenizer.empty()) fail("serve --shape {}: --tokenizer DIR is required", options.shape);
    if (options.device == "cpu") fail("serve --shape: synthetic weights are made on the GPU; use --device cuda");
#ifdef UBERLM_WITH_CUDA
    if (!cuda_device_present()) fail("serve --shape: no CUDA device is visible");
    const ModelConfig config = shape_config(options.shape);
    if (max_model_len == 0) max_model_len = default_max_model_len(config);
    const SyntheticFormat format = options.weights == "bf16" ? SyntheticFormat::Bf16 : SyntheticFormat::Nvfp4;
    const CudaBackendOptions cuda = cuda_options(options, max_model_len, block_size);
    std::unique_ptr<GpuBackend> backend;
    if (options.tensor_parallel > 1) {
      backend = std::make_unique<CudaTensorParallelBackend>(config, format, options.tensor_parallel, cuda, options.seed);
    } else {
      backend = std::make_unique<CudaBackend>(config, format, cuda, options.seed);
    }
    spdlog::info("cuda backend, {} shape with random {} weights (seed {}): {}", options.shape, options.weights,
                 options.seed, backend->memory_summary());
    served.backend = std::move(backend);
#else
    fail("serve --shape: this binary was built without CUDA");
#endif
    tokenizer_dir = options.tokenizer;
    served.name = options.shape;
  } else {
    served.model = Model::load(options.model);
    if (max_model_len == 0) max_model_len = default_max_model_len(served.model->config);
    served.backend = make_backend(*served.model, options.device, cuda_options(options, max_model_len, block_size),
                                  options.tensor_parallel);
    tokenizer_dir = options.tokenizer.empty() ? std::filesystem::path(options.model) : std::filesystem::path(options.tokenizer);
    served.name = std::filesystem::path(options.model).lexically_normal().filename().string();
    served.stop_token_ids = served.model->stop_token_ids;
  }
  served.tokenizer = BpeTokenizer::load(tokenizer_dir / "tokenizer.json");
  const int vocab = served.backend->config().vocab_size;
  if (served.tokenizer->vocab_size() > vocab) {
    fail("serve: {} has {} tokenizer ids but the model's vocab_size is {}", tokenizer_dir.string(),
         served.tokenizer->vocab_size(), vocab);
  }
  if (!options.served_model_name.empty()) served.name = options.served_model_name;
  if (served.name.empty()) served.name = "default";
  return served;
}

OpenAiServer* g_server = nullptr;

void request_stop(int) {
  if (g_server != nullptr) g_server->stop();
}

void serve(const ServeOptions& options) {
  EngineConfig config;
  int64_t max_model_len = options.max_model_len;
  Served served = load_served(options, max_model_len, config.scheduler.block_size);
  Backend& backend = *served.backend;
  config.scheduler.max_num_seqs = options.max_num_seqs;
  config.scheduler.max_model_len = max_model_len;
  config.scheduler.max_num_batched_tokens = options.max_num_batched_tokens;
  config.scheduler.num_slots = options.max_num_seqs;
  if (std::optional<KvBlockPool> pool = backend.kv_block_pool()) {
    config.scheduler.num_kv_blocks = pool->num_blocks;
  } else {
    // Host caches grow per slot; the default pool holds every running sequence at full length, so
    // preemption only happens when asked for.
    const int64_t kv_tokens =
        options.kv_cache_tokens > 0 ? options.kv_cache_tokens : options.max_num_seqs * max_model_len;
    config.scheduler.num_kv_blocks = kv_blocks_for(kv_tokens, config.scheduler.block_size);
  }
  config.max_waiting = options.max_waiting;

  Metrics metrics;
  Engine engine(backend, *served.tokenizer, config, metrics);
  ServerConfig server_config;
  server_config.host = options.host;
  server_config.port = options.port;
  server_config.model_name = served.name;
  server_config.api_key = options.api_key;
  server_config.stop_token_ids = served.stop_token_ids;
  OpenAiServer server(engine, *served.tokenizer, metrics, server_config);
  const int port = server.bind();
  g_server = &server;
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  spdlog::info("serving '{}' on http://{}:{} ({} backend, max-num-seqs {}, max-model-len {}, {} KV blocks of {} tokens)",
               server_config.model_name, options.host, port, backend.name(), options.max_num_seqs,
               config.scheduler.max_model_len, config.scheduler.num_kv_blocks, config.scheduler.block_size);
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
  cmd->add_option("--max-model-len", options->max_model_len, "Prompt + generated tokens per sequence (default: the model's, at most 8192)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 24));
  cmd->add_option("--max-num-batched-tokens", options->max_num_batched_tokens, "Token budget of one engine step")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))->capture_default_str();
  cmd->add_option("--kv-cache-tokens", options->kv_cache_tokens, "KV cache capacity in tokens (default: CPU max-num-seqs x max-model-len, CUDA from --gpu-memory-utilization)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 32));
  cmd->add_option("--max-waiting", options->max_waiting, "Queued requests beyond max-num-seqs before 503")
      ->check(CLI::Range(0, 1 << 20))->capture_default_str();
  cmd->add_option("--api-key", options->api_key, "Require 'Authorization: Bearer KEY' on /v1/*");
  cmd->add_option("--tensor-parallel", options->tensor_parallel,
                  "Shard the model over N GPUs (NCCL), or N CPU rank threads with --device cpu")
      ->check(CLI::Range(1, 64))->capture_default_str();
  cmd->callback([options] { serve(*options); });
}

}  // namespace uberlm::cli
