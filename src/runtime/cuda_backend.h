#pragma once
// The CUDA backend: the decoder of CpuDecoder, op by op, on the GPU. Device memory is planned once at
// load (weights, paged KV blocks, Gated DeltaNet states per slot, activations and workspace for
// max_batch_tokens); a plan that does not fit is an Error at load naming the numbers.
//
// Data flow per layer: fp32 residual stream x [T, D]; each linear layer reads bf16 rows whose length is
// padded to a multiple of 32 (the GEMV's K granularity; the padding is zero in weights and activations)
// and writes fp32. A linear layer over at most 64 rows runs on the small-M GEMV (cuda::gemv_*); over more
// rows (prefill) on cuBLAS (cuda::Gemm): bf16 weights directly, NVFP4 weights dequantised first into a
// bf16 scratch buffer planned at load for the largest NVFP4 layer. Each path is counted.
// A decode step (every chunk one token, every chunk wanting logits) is captured as one CUDA graph per
// batch size and replayed; its kernels are the eager ones with the same launch shapes, so a replay gives
// the eager result bit for bit.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/backend.h"

namespace uberlm {

class NcclCommunicator;

struct CudaBackendOptions {
  int max_slots = 1;
  int64_t max_context = 4096;       // tokens per sequence
  int64_t max_batch_tokens = 512;   // tokens of one forward
  int64_t max_logit_rows = 64;      // logits rows computed at once (more are done in pieces)
  bool cuda_graphs = true;
  bool strict = false;              // any fallback is an Error; UBERLM_STRICT=1 sets it too
  // Who takes KV blocks from the pool: the backend itself as each slot grows (one-shot tools), or a
  // scheduler that passes every sequence's block table in SequenceChunk::block_table (the server).
  bool scheduler_owns_kv_blocks = false;
  // KV pool size, the first rule that applies: num_kv_blocks blocks; every block that fits in
  // gpu_memory_utilization (0, 1] of the GPU's total memory after weights, states, activations and what
  // other processes hold (vLLM's option); max_slots x max_context tokens.
  int64_t num_kv_blocks = 0;
  double gpu_memory_utilization = 0;
  // Tensor parallelism: this rank's communicator; the config and weights are then the rank's shard
  // (model/tensor_parallel.h), o_proj/out_proj/down_proj outputs are all-reduced and lm_head's vocabulary
  // slices all-gathered, inside the decode graphs too. The caller keeps it alive and current on its device.
  const NcclCommunicator* communicator = nullptr;
};

enum class SyntheticFormat { Nvfp4, Bf16 };

// GPU time of one op class in a profiling pass.
struct KernelTime {
  std::string op;
  double microseconds = 0;
  int64_t launches = 0;
};

// True when the binary has CUDA and a device is visible.
bool cuda_device_present();

// device: "cpu", "cuda" or "auto" (cuda when cuda_device_present()). The CPU backend takes
// options.max_slots; the CUDA backend all of options. tensor_parallel > 1: the model sharded over that many
// GPUs (CudaTensorParallelBackend, each rank with options), or over as many CPU rank threads
// (CpuTensorParallelBackend).
std::unique_ptr<Backend> make_backend(const Model& model, const std::string& device, const CudaBackendOptions& options,
                                      int tensor_parallel = 1);
// The same for one-shot tools: max_slots slots of the model's context (at most 8192 tokens).
std::unique_ptr<Backend> make_backend(const Model& model, const std::string& device, int max_slots,
                                      int tensor_parallel = 1);

#ifdef UBERLM_WITH_CUDA
// What uberlm bench drives: one GPU (CudaBackend) or several (CudaTensorParallelBackend).
class GpuBackend : public Backend {
 public:
  // Runs `batch` (at most max_logit_rows logits rows) and leaves the logits on the device; then
  // argmax_tokens() gives each row's greedy token. Returns the rows.
  virtual int64_t forward_on_device(const ForwardBatch& batch) = 0;
  virtual std::vector<int32_t> argmax_tokens() = 0;
  // While on, forwards run eagerly and time each op class with CUDA events; take_profile() returns and
  // clears the sums.
  virtual void set_profiling(bool enabled) = 0;
  virtual std::vector<KernelTime> take_profile() = 0;
  // Bytes of all linear weights (lm_head included): what one forward streams from memory (all GPUs together).
  virtual int64_t weight_bytes() const = 0;
  // Bytes one decode token reads from its sequence's caches at cached length `context` (KV of every full
  // attention layer, conv and recurrent state of every Gated DeltaNet layer, read and written back).
  virtual int64_t cache_bytes_per_token(int64_t context) const = 0;
  struct Counters {
    int64_t gemv_linear_calls = 0;        // linear layers over at most 64 rows
    int64_t gemm_bf16_linear_calls = 0;   // over more rows, bf16 weights
    int64_t gemm_nvfp4_linear_calls = 0;  // over more rows, NVFP4 weights dequantised into the scratch buffer
    int64_t gemv_swiglu_calls = 0;        // MLP gate/up GEMVs that wrote SwiGLU from their epilogue
    int64_t graph_captures = 0;
    int64_t graph_replays = 0;
  };
  virtual Counters counters() const = 0;
  virtual std::string memory_summary() const = 0;
};

class CudaBackend : public GpuBackend {
 public:
  CudaBackend(const Model& model, const CudaBackendOptions& options);
  CudaBackend(const ModelConfig& config, const ModelWeights& weights, const CudaBackendOptions& options);
  // Random weights made on the GPU for `config`: every decoder linear layer in `format`, lm_head bf16.
  CudaBackend(const ModelConfig& config, SyntheticFormat format, const CudaBackendOptions& options, uint64_t seed);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  const ModelConfig& config() const override;
  int max_slots() const override;
  int64_t cached_length(int slot) const override;
  void release(int slot) override;
  std::optional<KvBlockPool> kv_block_pool() const override;
  ForwardResult forward(const ForwardBatch& batch) override;

  int64_t forward_on_device(const ForwardBatch& batch) override;
  std::vector<int32_t> argmax_tokens() override;

  void set_cuda_graphs(bool enabled);
  void set_profiling(bool enabled) override;
  std::vector<KernelTime> take_profile() override;

  int64_t weight_bytes() const override;
  int64_t cache_bytes_per_token(int64_t context) const override;
  Counters counters() const override;
  std::string memory_summary() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
#endif

}  // namespace uberlm
