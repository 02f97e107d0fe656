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

CudaBackendOptions cuda_options(const EngineStackOptions& options, int64_t max_model_len) {
  CudaBackendOptions cuda;
  cuda.max_slots = options.max_num_seqs;
  cuda.prefix_snapshots = options.enable_prefix_caching ? options.prefix_cache_snapshots : 0;
  cuda.max_context = max_model_len;
  cuda.max_batch_tokens = options.max_num_batched_tokens;
  // Every sequence's row in one piece; scored prompts (LogitRows::All) in pieces of up to 64 rows.
  cuda.max_logit_rows = std::max<int64_t>(options.max_num_seqs, std::min<int64_t>(64, options.max_num_batched_tokens));
  cuda.num_kv_blocks = options.kv_cache_tokens > 0 ? kv_blocks_for(options.kv_cache_tokens) : 0;
  cuda.gpu_memory_utilization = options.gpu_memory_utilization;
  cuda.tuning_table = options.tuning_table;
  cuda.strict = options.strict;
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

int64_t max_model_len_of(const EngineStackOptions& options, const ModelConfig& config) {
  return options.max_model_len > 0 ? options.max_model_len : default_max_model_len(config);
}

}  // namespace

int64_t default_max_model_len(const ModelConfig& config) {
  const int64_t context = config.max_position_embeddings > 0 ? config.max_position_embeddings : 4096;
  return std::min<int64_t>(context, 8192);
}

EngineStack::EngineStack(const Model& model, const BpeTokenizer* tokenizer, const EngineStackOptions& requested) {
  const EngineStackOptions options = resolved(requested);
  config_.scheduler.max_model_len = max_model_len_of(options, model.config);
  backend_ = make_backend(model, options.device, cuda_options(options, config_.scheduler.max_model_len),
                          options.tensor_parallel);
  start_engine(tokenizer, options);
}

#ifdef UBERLM_WITH_CUDA
EngineStack::EngineStack(const ModelConfig& shape, SyntheticFormat format, uint64_t seed, const BpeTokenizer* tokenizer,
                         const EngineStackOptions& requested) {
  const EngineStackOptions options = resolved(requested);
  if (options.device == "cpu") fail("synthetic weights are made on the GPU; use --device cuda");
  config_.scheduler.max_model_len = max_model_len_of(options, shape);
  backend_ = make_synthetic_backend(shape, format, cuda_options(options, config_.scheduler.max_model_len), seed,
                                    options.tensor_parallel);
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
