#pragma once
// The CUDA backend: the GPU decoder (runtime/cuda/decoder.h) behind the Backend interface. Device memory is
// planned once at load (runtime/cuda/device_memory.h); a plan that does not fit is an Error at load
// naming the numbers. The scheduler owns the sequences: every run carries its start position and the
// block table of its KV blocks in this backend's pool, which it writes and reads exactly.
//
// A linear layer over at most kGemvMaxM rows runs on the small-M GEMV, over more rows (prefill) on
// cuBLAS (with deterministic, on the GEMV in pieces); each path is counted. A decode step (every chunk one token wanting its logits) is captured as
// one CUDA graph per batch size and replayed, with the eager result bit for bit.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/backend.h"
#include "runtime/kernel_time.h"
#ifdef UBERLM_WITH_CUDA
#include "runtime/cuda/gemv_tuning_table.h"
#endif

namespace uberlm {

class NcclCommunicator;

// Which decode steps take the fused kernels (issue 15): decode steps of 1..8 sequences run each Gated DeltaNet layer
// as one persistent launch and each attention layer's MLP as another (ops/cuda/fused/decode_phases.h,
// gpu::fused_decoder_layer); other steps run unfused by design.
// Fused: a model it cannot run is an Error at load. Auto: fused where it can run, else unfused, logged once at
// load, counted (Counters::fused_decode_fallbacks; each step's ForwardResult says which ran, for /metrics) and an
// Error with strict.
enum class DecodePath { Unfused, Fused, Auto };
// The spelling of --decode-path.
inline const char* decode_path_name(DecodePath path) {
  switch (path) {
    case DecodePath::Fused: return "fused";
    case DecodePath::Auto: return "auto";
    default: return "unfused";
  }
}

struct CudaBackendOptions {
  int max_slots = 1;
  int prefix_snapshots = 0;          // prefix caching's snapshot ids (SequenceChunk::prefix_save_snapshot), planned at load
  int64_t max_context = 4096;       // tokens per sequence
  // max_context is the most wanted: a KV pool that holds fewer tokens lowers it to what the pool holds (logged)
  // instead of failing the plan.
  bool context_fits_pool = false;
  int64_t max_batch_tokens = 512;   // tokens of one forward
  int64_t max_logit_rows = 64;      // logits rows computed at once (more are done in pieces)
  bool cuda_graphs = true;
  // KV pool size, the first rule that applies: num_kv_blocks blocks; every block that fits in
  // gpu_memory_utilization (0, 1] of the GPU's total memory after weights, states, activations and what
  // other processes hold (vLLM's option); max_slots x max_context tokens.
  int64_t num_kv_blocks = 0;
  double gpu_memory_utilization = 0;
  // The GEMV winners table (`uberlm tune`): this file; when empty this GPU's file at the default place
  // (runtime/cuda/gemv_tuning_table.h) if there is one; "none": no table. strict: any fallback (a launch
  // the table lacks, no table, a table of another GPU) is an Error; UBERLM_STRICT=1 sets it too.
  std::string tuning_table;
  bool strict = false;
  // Batch-invariant forwards (--deterministic): a token's logits are the same bits whatever shares its step,
  // however its prompt was cut into steps, prefilled or decoded (gpu::GpuDecoder::deterministic,
  // gpu::LinearRunner). Prompts then run at the decode kernels' speed: see the README for the cost.
  bool deterministic = false;
  // NVFP4 products of 17..128 rows on Hopper's wgmma GEMM (ops/cuda/gemm_nvfp4_wgmma.h), for which every NVFP4 layer
  // whose sizes are multiples of 64 is also held in its fragment order (~1.1x the layer's bytes again); false
  // (--no-small-m-gemm): the GEMV, and no second copy. Off in deterministic mode.
  bool small_m_gemm = true;
  DecodePath decode_path = DecodePath::Unfused;
  // Tensor parallelism: this rank's communicator; the config and weights are then the rank's shard
  // (model/tensor_parallel.h), o_proj/out_proj/down_proj outputs are all-reduced and lm_head's vocabulary
  // slices all-gathered, inside the decode graphs too. The caller keeps it alive and current on its device.
  const NcclCommunicator* communicator = nullptr;
};

enum class SyntheticFormat { Nvfp4, Bf16 };

// True when the binary has CUDA and a device is visible.
bool cuda_device_present();

#ifdef UBERLM_WITH_CUDA
// What `uberlm bench` measures and `serve` reports: one GPU (CudaBackend) or several
// (CudaTensorParallelBackend).
class GpuBackend : public Backend {
 public:
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
    int64_t gemv_linear_calls = 0;        // linear layers over at most kGemvMaxM rows
    int64_t gemm_bf16_linear_calls = 0;   // over more rows, bf16 weights
    int64_t gemm_nvfp4_linear_calls = 0;  // over more rows, NVFP4 weights dequantised into the scratch buffer
    int64_t gemm_nvfp4_prefetched_calls = 0;  // ... of them, dequantised ahead beside the mixer's core
    int64_t gemv_swiglu_calls = 0;        // MLP gate/up GEMVs that wrote SwiGLU from their epilogue
    int64_t wgmma_linear_calls = 0;       // NVFP4 layers of 17..128 rows on the wgmma GEMM (Hopper) instead
    int64_t tuning_table_hits = 0;        // GEMV and prompt-step wgmma launches tuned by the table
    int64_t tuning_table_misses = 0;      // ... on the built-in tuning (a cell the table lacks)
    int64_t prefill_attention_calls = 0;      // layers whose prompt rows ran the tensor-core prefill kernel
    int64_t prefill_attention_wgmma_calls = 0;  // ... of them its Hopper (wgmma) form
    int64_t prefill_attention_fallbacks = 0;  // ... ran the decode kernel (a head_dim without a prefill kernel)
    int64_t chunked_delta_rule_calls = 0;      // Gated DeltaNet layers whose prompt rows ran the chunked form
    int64_t chunked_delta_rule_fallbacks = 0;  // ... ran token by token (head dims over the chunked kernel's)
    int64_t fused_decode_layers = 0;     // layers of decode steps run by fused launches
    int64_t fused_decode_fallbacks = 0;  // ... run unfused because the model is one they cannot run (path auto)
    int64_t graph_captures = 0;
    int64_t graph_replays = 0;
  };
  virtual Counters counters() const = 0;
  virtual std::string memory_summary() const = 0;
  // Every GEMV and wgmma GEMM launch shape the forwards so far have made (rank 0's with tensor parallelism).
  virtual std::vector<gpu::GemvCell> gemv_cells() const = 0;
  virtual std::vector<gpu::WgmmaCell> wgmma_cells() const = 0;
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
  void release(int slot) override {}  // a run at start 0 begins a slot afresh; nothing is held per slot
  std::optional<KvBlockPool> kv_block_pool() const override;
  int64_t max_context() const override;
  ForwardResult forward(const ForwardBatch& batch) override;
  // Snapshots of a slot's Gated DeltaNet states in device memory planned at load, copied device to device
  // on the stream the forwards run on, so each lands between the forwards queued before and after it.
  int max_prefix_snapshots() const override;
  void restore_prefix(int snapshot, int slot) override;
  void drop_prefix(int snapshot) override;
  // Runs as forward() does (through the batch size's graph when it is a decode step, with the snapshot
  // copies captured in it), then reads the snapshots and the first chunk's caches back.
  ForwardResult forward_observed(const ForwardBatch& batch, ForwardSnapshot& snapshot) override;

  void set_cuda_graphs(bool enabled);
  void set_profiling(bool enabled) override;
  std::vector<KernelTime> take_profile() override;

  int64_t weight_bytes() const override;
  int64_t cache_bytes_per_token(int64_t context) const override;
  Counters counters() const override;
  std::string memory_summary() const override;
  std::vector<gpu::GemvCell> gemv_cells() const override;
  std::vector<gpu::WgmmaCell> wgmma_cells() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
#endif

}  // namespace uberlm
