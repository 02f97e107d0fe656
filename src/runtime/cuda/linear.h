#pragma once
// Linear layers on the path the row count decides: the small-M GEMV (ops/cuda/gemv.h) up to kGemvMaxM rows,
// cuBLAS above (ops/cuda/gemm.h), NVFP4 weights then dequantised into a scratch buffer planned at load. On
// Hopper, NVFP4 layers placed with fragment tiles take the wgmma GEMM (ops/cuda/gemm_nvfp4_wgmma.h) from
// kSmallMGemmMinRows to kGemmWgmmaMaxM rows instead of the GEMV or the dequantised weights (set_small_m_gemm).
// Every call is counted by path. A GEMV launch takes its tuning from this GPU's winners table
// (gemv_tuning_table.h); a launch the table lacks takes the built-in tuning, counted as a miss, logged
// once per cell, and refused in strict mode.
// Deterministic mode (--deterministic) instead runs every linear layer on the GEMV, in pieces of at most
// kGemvMaxM rows, on batch-invariant tunings of one K split per cell (tuning_for), so that a row's
// outputs are the same bits whatever rows share its step (no cuBLAS).
#include <cuda_runtime_api.h>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "ops/cuda/gemm.h"
#include "ops/cuda/gemm_nvfp4_wgmma.h"
#include "runtime/cuda/device_model.h"
#include "runtime/cuda/gemv_tuning_table.h"

namespace uberlm::gpu {

// NVFP4 weights whose dequantisation a prompt step queues ahead (LinearRunner::prefetch_dequantized), each in
// a bf16 scratch buffer of its own beside the in-line one.
inline constexpr int kPrefetchedWeights = 4;
inline constexpr int kGemmScratchSlots = 1 + kPrefetchedWeights;
// Fewest rows the wgmma GEMM takes: at 8 rows the GEMV is 1.4-1.9x faster on the 27B shapes, at 32 the GEMM
// 1.1-1.7x (bench/results/gemm-wgmma-small-m-h200.json). Grouped projections (q/k/v, a Gated DeltaNet layer's
// four inputs, gate/up) take it in one launch, as they take the GEMV.
inline constexpr int64_t kSmallMGemmMinRows = 17;

struct LinearCounters {
  int64_t gemv_linear_calls = 0;        // linear layers over at most kGemvMaxM rows (deterministic: 64-row pieces)
  int64_t gemm_bf16_linear_calls = 0;   // over more rows, bf16 weights
  int64_t gemm_nvfp4_linear_calls = 0;  // over more rows, NVFP4 weights dequantised into the scratch buffer
  int64_t gemm_nvfp4_prefetched_calls = 0;  // ... of them, dequantised ahead on the side stream (prefetch_dequantized)
  int64_t gemv_swiglu_calls = 0;        // MLP gate/up GEMVs that wrote SwiGLU from their epilogue
  int64_t wgmma_linear_calls = 0;       // NVFP4 layers of kSmallMGemmMinRows..kGemmWgmmaMaxM rows on the wgmma GEMM
  int64_t tuning_table_hits = 0;        // GEMV and prompt-step wgmma launches whose tuning came from the table
  int64_t tuning_table_misses = 0;      // ... that took the built-in tuning
};

class LinearRunner {
 public:
  // large_m: forwards can have more than kGemvMaxM rows, so cuBLAS is needed (never in deterministic mode).
  // Its handle takes device memory of its own: make the runner before measuring free memory.
  // table: this GPU's winners (null: none, every launch a miss); strict: a miss is an Error.
  LinearRunner(cudaStream_t stream, bool large_m, const GemvTuningTable* table, bool strict, bool deterministic);
  ~LinearRunner();
  LinearRunner(const LinearRunner&) = delete;
  LinearRunner& operator=(const LinearRunner&) = delete;
  bool large_m() const { return gemm_ != nullptr; }
  // The large-M path's bf16 scratch (kGemmScratchSlots buffers of slot_elements, the largest NVFP4 layer) and
  // cuBLAS workspace.
  void set_gemm_memory(uint16_t* scratch, int64_t slot_elements, uint8_t* workspace);
  // Turns the wgmma GEMM on for the layers with fragment tiles (DeviceLinear::wgmma_tiles), with its workspace.
  // Never in deterministic mode (its K split differs from the GEMV's, so a row's bits would depend on M).
  void set_small_m_gemm(const cuda::GemmWgmmaWorkspace& workspace);
  // Steps of more than kGemvMaxM rows: queues the dequantisation of up to kPrefetchedWeights NVFP4 weights on a
  // side stream, each into a scratch buffer of its own, starting when the main stream reaches this point,
  // so that it runs beside the kernels queued next (a mixer's core: the Gated DeltaNet and attention kernels
  // leave memory bandwidth and SMs idle, where cuBLAS's products would not); linear() then multiplies from
  // the buffer. The same bits as the in-line dequantisation. Other weights, steps, and steps being captured
  // as a graph: nothing.
  void prefetch_dequantized(std::initializer_list<const DeviceLinear*> weights, int64_t rows);

  // y [rows, w.out] = x [rows, w.in_padded] bf16 . W^T (+ bias), summed in fp32 and written as y_dtype: F32, or
  // BF16 (rounded once; only for weights without a bias).
  void linear(const DeviceLinear& w, const uint16_t* x, int64_t rows, void* y, DType y_dtype = DType::F32);
  // Linear layers that read the same activations, in one GEMV launch when they can share one (up to
  // kGemvMaxTargets weights of one format at most kGemvMaxM rows), else each on its own.
  struct Output {
    const DeviceLinear* weight;
    void* y;
  };
  void group(std::initializer_list<Output> outputs, const uint16_t* x, int64_t rows, DType y_dtype = DType::F32);
  // gate/up with SwiGLU in the GEMV's epilogue: out bf16 [rows, out_stride] = silu(x.G^T) * (x.U^T), the
  // bits of group() followed by launch_swiglu. Only when fuses_swiglu().
  bool fuses_swiglu(const DeviceLinear& gate, const DeviceLinear& up, int64_t rows) const;
  void gate_up_swiglu(const DeviceLinear& gate, const DeviceLinear& up, const uint16_t* x, int64_t rows,
                      uint16_t* out, int64_t out_stride);

  const LinearCounters& counters() const { return counters_; }
  // Every GEMV and wgmma GEMM launch shape this runner has tuned (what `uberlm tune` measures for a model).
  const std::set<GemvCell>& cells_seen() const { return cells_seen_; }
  const std::set<WgmmaCell>& wgmma_cells_seen() const { return wgmma_cells_seen_; }

 private:
  bool takes_small_m_gemm(const DeviceLinear& w, int64_t rows) const;
  cuda::GemvTuning tuning_for(GemvKernel kernel, int64_t n, int64_t k, int64_t rows);
  cuda::GemvTuning table_tuning(GemvKernel kernel, int64_t n, int64_t k, int64_t rows);
  cuda::GemvTuning deterministic_tuning(GemvKernel kernel, int64_t n, int64_t k, int64_t rows);
  // The wgmma GEMM's K split for a launch of n rows in row_tiles (all targets) over K: for more than kGemvMaxM rows
  // the table's, else (and for decode steps) the built-in.
  int wgmma_splits(int64_t n, int64_t row_tiles, int64_t k, int64_t rows);
  static std::string gemv_cell_label(const GemvCell& cell);
  void count_miss(const std::string& cell, const std::string& built_in, const std::string& missing);
  void group_piece(std::span<const Output> outputs, const uint16_t* x, int64_t rows, DType y_dtype);
  // One wgmma GEMM launch for outputs that all take it (at most kGemmWgmmaMaxTargets).
  void multiply_on_small_m_gemm(std::span<const Output> outputs, const uint16_t* x, int64_t rows, DType y_dtype);
  void add_biases(std::span<const Output> outputs, int64_t rows);

  cudaStream_t stream_;
  const GemvTuningTable* table_;
  bool strict_;
  bool deterministic_;
  std::set<std::string> logged_misses_;  // cells' labels
  // Deterministic mode: per cell (M bucket 1), the table's invariant tuning, or why there is none.
  struct InvariantWinner {
    std::optional<cuda::GemvTuning> tuning;
    std::string missing;
  };
  std::map<GemvCell, InvariantWinner> invariant_winners_;
  std::set<GemvCell> cells_seen_;
  std::set<WgmmaCell> wgmma_cells_seen_;
  std::unique_ptr<cuda::Gemm> gemm_;
  std::optional<cuda::GemmWgmmaWorkspace> small_m_gemm_;
  uint16_t* gemm_scratch_ = nullptr;
  int64_t gemm_scratch_elements_ = 0;
  // prefetch_dequantized's side stream and, per buffer, the weight it holds (null: none), the event its
  // dequantisation completes, and the event the product that read it last completes.
  cudaStream_t prefetch_stream_ = nullptr;
  struct PrefetchSlot {
    const DeviceLinear* weight = nullptr;
    cudaEvent_t ready = nullptr;
    cudaEvent_t read = nullptr;
  };
  PrefetchSlot prefetched_[kPrefetchedWeights];
  cudaEvent_t prefetch_start_ = nullptr;
  uint16_t* prefetch_buffer(int slot) const;
  // linear()'s product of a prefetched weight; false when `w` is not prefetched.
  bool multiply_prefetched(const DeviceLinear& w, const uint16_t* x, int64_t rows, void* y, DType y_dtype);
  LinearCounters counters_;
};

}  // namespace uberlm::gpu
