#include "runtime/engine_stack.h"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "runtime/backend_factory.h"

namespace uberlm {

namespace {

int64_t kv_blocks_for(int64_t tokens) { return (tokens + kKvBlockSize - 1) / kKvBlockSize; }

// The options with the step token budget resolved for the backend `device` picks.
EngineStackOptions resolved(EngineStackOptions options) {
  if (options.max_num_batched_tokens == 0) {
    options.max_num_batched_tokens = runs_on_cuda(options.device) ? kCudaDefaultStepTokens : kCpuDefaultStepTokens;
  }
  return options;
}

// The context a stack asks its backend for: an explicit max_model_len; else, on a GPU whose KV pool is sized by
// memory or by kv_cache_tokens, the model's whole limit, which the backend lowers at load to what its pool holds
// (`fits_pool`); else default_max_model_len.
struct ContextRequest {
  int64_t max_model_len;
  bool fits_pool;
};

int64_t model_context_limit(const ModelConfig& config) {
  return config.max_position_embeddings > 0 ? config.max_position_embeddings : 4096;
}

ContextRequest context_request(const EngineStackOptions& options, const ModelConfig& config) {
  if (options.max_model_len > 0) return {options.max_model_len, false};
  const bool pool_planned = options.gpu_memory_utilization > 0 || options.kv_cache_tokens > 0;
  if (runs_on_cuda(options.device) && pool_planned) return {model_context_limit(config), true};
  return {default_max_model_len(config), false};
}

CudaBackendOptions cuda_options(const EngineStackOptions& options, const ContextRequest& context) {
  CudaBackendOptions cuda;
  cuda.max_slots = options.max_num_seqs;
  cuda.prefix_snapshots = options.enable_prefix_caching ? options.prefix_cache_snapshots : 0;
  cuda.max_context = context.max_model_len;
  cuda.context_fits_pool = context.fits_pool;
  cuda.max_batch_tokens = options.max_num_batched_tokens;
  // Every sequence's row in one piece; scored prompts (LogitRows::All) in pieces of up to 64 rows.
  cuda.max_logit_rows = std::max<int64_t>(options.max_num_seqs, std::min<int64_t>(64, options.max_num_batched_tokens));
  cuda.num_kv_blocks = options.kv_cache_tokens > 0 ? kv_blocks_for(options.kv_cache_tokens) : 0;
  cuda.gpu_memory_utilization = options.gpu_memory_utilization;
  cuda.tuning_table = options.tuning_table;
  cuda.strict = options.strict;
  cuda.deterministic = options.deterministic;
  cuda.small_m_gemm = options.small_m_gemm;
  cuda.decode_path = options.decode_path;
  return cuda;
}

// The snapshots prefix caching gets: those asked for, or none (logged; an error with strict) when the
// backend keeps none.
int prefix_snapshots_for(const Backend& backend, const EngineStackOptions& options) {
  if (!options.enable_prefix_caching) return 0;
  if (backend.max_prefix_snapshots() == 0) {
    if (options.strict) fail("--enable-prefix-caching: backend {} keeps no prefix snapshots yet (--strict)", backend.name());
    spdlog::warn("--enable-prefix-caching: backend {} keeps no prefix snapshots yet; running without prefix caching",
                 backend.name());
    return 0;
  }
  return std::min(options.prefix_cache_snapshots, backend.max_prefix_snapshots());
}

// What the scheduler may give a sequence: the request, lowered to the backend's own bound.
int64_t granted_max_model_len(const ContextRequest& context, const Backend& backend) {
  const int64_t bound = backend.max_context();
  return bound > 0 ? std::min(context.max_model_len, bound) : context.max_model_len;
}

}  // namespace

int64_t default_max_model_len(const ModelConfig& config) { return std::min<int64_t>(model_context_limit(config), 8192); }

EngineStack::EngineStack(const Model& model, const BpeTokenizer* tokenizer, const EngineStackOptions& requested) {
  const EngineStackOptions options = resolved(requested);
  const ContextRequest context = context_request(options, model.config);
  backend_ = make_backend(model, options.device, cuda_options(options, context), options.tensor_parallel);
  config_.scheduler.max_model_len = granted_max_model_len(context, *backend_);
  start_engine(tokenizer, options);
}

#ifdef UBERLM_WITH_CUDA
EngineStack::EngineStack(const ModelConfig& shape, SyntheticFormat format, uint64_t seed, const BpeTokenizer* tokenizer,
                         const EngineStackOptions& requested) {
  const EngineStackOptions options = resolved(requested);
  if (options.device == "cpu") fail("synthetic weights are made on the GPU; use --device cuda");
  const ContextRequest context = context_request(options, shape);
  backend_ = make_synthetic_backend(shape, format, cuda_options(options, context), seed, options.tensor_parallel);
  config_.scheduler.max_model_len = granted_max_model_len(context, *backend_);
  start_engine(tokenizer, options);
}

GpuBackend* EngineStack::gpu_backend() const { return dynamic_cast<GpuBackend*>(backend_.get()); }
#endif

EngineStack::~EngineStack() = default;

void EngineStack::start_engine(const BpeTokenizer* tokenizer, const EngineStackOptions& options) {
  SchedulerConfig& scheduler = config_.scheduler;
  scheduler.max_num_seqs = options.max_num_seqs;
  scheduler.max_num_batched_tokens = options.max_num_batched_tokens;
  scheduler.num_slots = options.max_num_seqs;
  if (std::optional<KvBlockPool> pool = backend_->kv_block_pool()) {
    scheduler.num_kv_blocks = pool->num_blocks;
  } else {
    // Host caches grow per slot; the default pool holds every running sequence at full length, so
    // preemption only happens when asked for.
    scheduler.num_kv_blocks = kv_blocks_for(options.kv_cache_tokens > 0 ? options.kv_cache_tokens
                                                                         : options.max_num_seqs * scheduler.max_model_len);
  }
  scheduler.prefix_snapshots = prefix_snapshots_for(*backend_, options);
  config_.max_waiting = options.max_waiting;
  config_.loop_thread = options.loop_thread;
  if (tokenizer && tokenizer->vocab_size() > backend_->config().vocab_size) {
    fail("the tokenizer has {} ids but the model's vocab_size is {}", tokenizer->vocab_size(),
         backend_->config().vocab_size);
  }
  engine_ = std::make_unique<Engine>(*backend_, tokenizer, config_, metrics_);
}

}  // namespace uberlm
