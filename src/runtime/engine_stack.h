#pragma once
// Everything a command needs to generate with a model: its backend, an engine (and scheduler) sized to
// it, and their metrics. The CLI fills EngineStackOptions from its flags; serve, run, eval and bench all
// assemble their runtime here.
#include <cstdint>
#include <memory>
#include <string>

#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/engine.h"
#include "runtime/metrics.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

struct EngineStackOptions {
  std::string device = "auto";  // cpu, cuda, or auto (cuda when a GPU is present)
  int tensor_parallel = 1;
  int max_num_seqs = 16;
  // Prompt + generated tokens per sequence. 0: on a GPU whose KV pool
  // is planned by memory (gpu_memory_utilization) or kv_cache_tokens the model's whole context, lowered at load
  // to what the pool holds; otherwise default_max_model_len.
  int64_t max_model_len = 0;
  // Tokens of one engine step; 0: the backend's default (default_step_tokens).
  int64_t max_num_batched_tokens = 0;
  // KV cache capacity; 0: on the CPU every sequence at full length, on CUDA what gpu_memory_utilization leaves.
  int64_t kv_cache_tokens = 0;
  double gpu_memory_utilization = 0.9;
  int max_waiting = 256;
  bool loop_thread = true;  // false: the caller steps the engine (one-shot tools)
  // CUDA: the GEMV tuning table (CudaBackendOptions::tuning_table) and strict mode (no fallback).
  std::string tuning_table;
  bool strict = false;
  bool deterministic = false;  // CUDA: CudaBackendOptions::deterministic (the CPU backend is batch-invariant always)
  bool small_m_gemm = true;    // CUDA: CudaBackendOptions::small_m_gemm
  DecodePath decode_path = DecodePath::Unfused;  // CUDA: CudaBackendOptions::decode_path
  // Prefix caching (runtime/prefix_cache.h) with up to this many cached prefixes. A backend that keeps
  // no snapshots runs without it, logged, or refuses to start with strict.
  bool enable_prefix_caching = false;
  int prefix_cache_snapshots = 64;
};

// The step token budget a backend runs best with when the options leave it open: on a GPU 4096 (every step
// dequantises and streams all weights once; on the 27B shape a 32768-token prompt in 4096-token steps takes
// 0.7% longer than in one step, with a sixth of its activation memory, and in 2048-token steps 4.7% longer:
// bench/notes/prefill.md), on the CPU 512.
inline constexpr int64_t kCudaDefaultStepTokens = 4096;
inline constexpr int64_t kCpuDefaultStepTokens = 512;

// A short default context for one-shot tools and the CPU: the model's max_position_embeddings (4096 when
// unknown), at most 8192.
int64_t default_max_model_len(const ModelConfig& config);

class EngineStack {
 public:
  // tokenizer may be null (ids only); the model and tokenizer must outlive the stack.
  EngineStack(const Model& model, const BpeTokenizer* tokenizer, const EngineStackOptions& options);
#ifdef UBERLM_WITH_CUDA
  // Random weights of `shape` made on the GPU (load tests and benchmarks without a checkpoint).
  EngineStack(const ModelConfig& shape, SyntheticFormat format, uint64_t seed, const BpeTokenizer* tokenizer,
              const EngineStackOptions& options);
  GpuBackend* gpu_backend() const;  // null for the CPU backend
#endif
  ~EngineStack();

  Backend& backend() const { return *backend_; }
  Engine& engine() const { return *engine_; }
  Metrics& metrics() { return metrics_; }
  const EngineConfig& config() const { return config_; }

 private:
  void start_engine(const BpeTokenizer* tokenizer, const EngineStackOptions& options);

  std::unique_ptr<Backend> backend_;
  Metrics metrics_;
  EngineConfig config_;
  std::unique_ptr<Engine> engine_;
};

}  // namespace uberlm
