#include "runtime/cuda/linear.h"

#include <algorithm>
#include <string>
#include <vector>

#include <spdlog/spdlog.h>

#include "core/error.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/gemv.h"

namespace uberlm::gpu {

namespace {

// Runs piece(first_row, rows) over [0, rows) in pieces of at most kGemvMaxM rows.
template <class Piece>
void in_gemv_pieces(int64_t rows, const Piece& piece) {
  for (int64_t first = 0; first < rows; first += cuda::kGemvMaxM) piece(first, std::min(cuda::kGemvMaxM, rows - first));
}

// Row `row` of a [rows, width] output of y_dtype.
void* output_row(void* y, DType y_dtype, int64_t width, int64_t row) {
  return static_cast<char*>(y) + row * width * static_cast<int64_t>(dtype_size(y_dtype));
}

// The bias is added by an fp32 kernel after the product, so a layer with one needs fp32 outputs.
void check_output_dtype(const DeviceLinear& w, DType y_dtype) {
  if (w.bias && y_dtype != DType::F32) fail("linear {}: a bias is added to fp32 outputs only", w.name);
}

cuda::GemvTuning built_in_batch_invariant_tuning(GemvKernel kernel, int64_t k, int64_t rows) {
  switch (kernel) {
    case GemvKernel::Nvfp4: return cuda::gemv_nvfp4_batch_invariant_tuning(rows, k);
    case GemvKernel::Bf16: return cuda::gemv_bf16_batch_invariant_tuning(rows);
    case GemvKernel::Nvfp4Swiglu: return cuda::gemv_paired_tuning(cuda::gemv_nvfp4_batch_invariant_tuning(rows, k));
    case GemvKernel::Bf16Swiglu: return cuda::gemv_paired_tuning(cuda::gemv_bf16_batch_invariant_tuning(rows));
  }
  fail("gemv: unknown kernel kind {}", static_cast<int>(kernel));
}

// Whether a kernel of this tuning is compiled for the launch kind (the tuning names are unique).
bool has_compiled_kernel(GemvKernel kernel, const cuda::GemvTuning& tuning) {
  std::vector<cuda::GemvTuning> all;
  switch (kernel) {
    case GemvKernel::Nvfp4: all = cuda::gemv_nvfp4_tunings(); break;
    case GemvKernel::Bf16: all = cuda::gemv_bf16_tunings(); break;
    case GemvKernel::Nvfp4Swiglu: all = cuda::gemv_nvfp4_paired_tunings(); break;
    case GemvKernel::Bf16Swiglu: all = cuda::gemv_bf16_paired_tunings(); break;
  }
  const std::string name = cuda::gemv_tuning_name(tuning);
  return std::any_of(all.begin(), all.end(), [&](const cuda::GemvTuning& t) { return cuda::gemv_tuning_name(t) == name; });
}

}  // namespace

LinearRunner::LinearRunner(cudaStream_t stream, bool large_m, const GemvTuningTable* table, bool strict,
                           bool deterministic)
    : stream_(stream),
      table_(table),
      strict_(strict),
      deterministic_(deterministic),
      gemm_(large_m && !deterministic ? std::make_unique<cuda::Gemm>(stream) : nullptr) {
  if (!gemm_) return;
  CUDA_CHECK(cudaStreamCreateWithFlags(&prefetch_stream_, cudaStreamNonBlocking));
  CUDA_CHECK(cudaEventCreateWithFlags(&prefetch_start_, cudaEventDisableTiming));
  for (PrefetchSlot& slot : prefetched_) {
    CUDA_CHECK(cudaEventCreateWithFlags(&slot.ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&slot.read, cudaEventDisableTiming));
  }
}

LinearRunner::~LinearRunner() {
  for (PrefetchSlot& slot : prefetched_) {
    if (slot.ready) cudaEventDestroy(slot.ready);
    if (slot.read) cudaEventDestroy(slot.read);
  }
  if (prefetch_start_) cudaEventDestroy(prefetch_start_);
  if (prefetch_stream_) cudaStreamDestroy(prefetch_stream_);
}

cuda::GemvTuning LinearRunner::tuning_for(GemvKernel kernel, int64_t n, int64_t k, int64_t rows) {
  return deterministic_ ? deterministic_tuning(kernel, n, k, rows) : table_tuning(kernel, n, k, rows);
}

cuda::GemvTuning LinearRunner::table_tuning(GemvKernel kernel, int64_t n, int64_t k, int64_t rows) {
  const GemvCell cell{kernel, n, k, gemv_m_bucket(rows)};
  cells_seen_.insert(cell);
  if (table_) {
    if (const std::optional<cuda::GemvTuning> tuning = table_->find(kernel, n, k, rows)) {
      ++counters_.tuning_table_hits;
      return *tuning;
    }
  }
  const cuda::GemvTuning built_in = built_in_tuning(kernel, n, k, rows);
  count_miss(gemv_cell_label(cell), cuda::gemv_tuning_name(built_in), table_ ? "no tuning-table cell" : "no tuning table is loaded");
  return built_in;
}

int LinearRunner::wgmma_splits(int64_t n, int64_t row_tiles, int64_t k, int64_t rows) {
  const WgmmaCell cell{n, k, cuda::gemm_nvfp4_wgmma_tokens_bucket(rows)};
  wgmma_cells_seen_.insert(cell);
  const int built_in = cuda::gemm_nvfp4_wgmma_splits(row_tiles, k);
  // Decode steps keep the built-in split: inside the step's graph it measured faster than the splits that win
  // alone (bench/notes/gemv.md, session 32), which only prompt steps, run eagerly, take from the table.
  if (rows <= cuda::kGemvMaxM) return built_in;
  if (table_) {
    if (const std::optional<int> splits = table_->find_wgmma_splits(n, k, rows)) {
      ++counters_.tuning_table_hits;
      return *splits;
    }
  }
  count_miss(fmt::format("wgmma N={} K={} M<={}", cell.n, cell.k, cell.m), fmt::format("{} K splits", built_in),
             table_ ? "no tuning-table cell" : "no tuning table is loaded");
  return built_in;
}

// One K split serves every M of a cell, so that a row's sums do not depend on M: the batch-invariant variant of
// the cell's winner at one row (the batch decode serves most; that kernel then runs at every M), resolved once
// per cell.
cuda::GemvTuning LinearRunner::deterministic_tuning(GemvKernel kernel, int64_t n, int64_t k, int64_t rows) {
  const GemvCell cell{kernel, n, k, 1};
  auto [entry, fresh] = invariant_winners_.try_emplace(cell);
  InvariantWinner& winner = entry->second;
  if (fresh) {
    cells_seen_.insert(cell);
    const std::optional<cuda::GemvTuning> one_row = table_ ? table_->find(kernel, n, k, 1) : std::nullopt;
    if (one_row) {
      cuda::GemvTuning invariant = *one_row;
      invariant.batch_invariant = true;
      if (has_compiled_kernel(kernel, invariant)) winner.tuning = invariant;
      else winner.missing = fmt::format("the one-row winner {} has no batch-invariant kernel", cuda::gemv_tuning_name(*one_row));
    } else {
      winner.missing = table_ ? "no tuning-table cell at one row" : "no tuning table is loaded";
    }
  }
  if (winner.tuning) {
    ++counters_.tuning_table_hits;
    return *winner.tuning;
  }
  const cuda::GemvTuning built_in = built_in_batch_invariant_tuning(kernel, k, rows);
  count_miss(gemv_cell_label(cell), cuda::gemv_tuning_name(built_in), winner.missing);
  return built_in;
}

std::string LinearRunner::gemv_cell_label(const GemvCell& cell) {
  return fmt::format("GEMV {} N={} K={} M<={}", gemv_kernel_name(cell.kernel), cell.n, cell.k, cell.m);
}

// A launch without its table tuning runs the built-in one: counted as a miss, logged once per cell, an Error in
// strict mode.
void LinearRunner::count_miss(const std::string& cell, const std::string& built_in, const std::string& missing) {
  ++counters_.tuning_table_misses;
  if (strict_) {
    fail("strict: {}: {}, so the built-in {} would run (`uberlm tune` measures the cells a model uses)", cell, missing,
         built_in);
  }
  if (logged_misses_.insert(cell).second) {
    spdlog::warn("{}: {}; the built-in {} runs (`uberlm tune` measures the cells a model uses)", cell, missing,
                 built_in);
  }
}

void LinearRunner::set_gemm_memory(uint16_t* scratch, int64_t slot_elements, uint8_t* workspace) {
  gemm_scratch_ = scratch;
  gemm_scratch_elements_ = slot_elements;
  if (gemm_) gemm_->set_workspace(workspace, cuda::kGemmWorkspaceBytes);
}

void LinearRunner::set_small_m_gemm(const cuda::GemmWgmmaWorkspace& workspace) {
  if (deterministic_) fail("LinearRunner: the wgmma GEMM is not batch-invariant against the GEMV (deterministic mode)");
  small_m_gemm_ = workspace;
}

bool LinearRunner::takes_small_m_gemm(const DeviceLinear& w, int64_t rows) const {
  return small_m_gemm_ && w.wgmma_tiles && rows >= kSmallMGemmMinRows && rows <= cuda::kGemmWgmmaMaxM;
}

void LinearRunner::prefetch_dequantized(std::initializer_list<const DeviceLinear*> weights, int64_t rows) {
  if (!gemm_ || !gemm_scratch_ || rows <= cuda::kGemvMaxM) return;
  // A decode step of more than kGemvMaxM sequences may be captured as a graph: its products dequantise in line
  // rather than fork the capture onto the side stream.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(stream_, &capture));
  if (capture != cudaStreamCaptureStatusNone) return;
  CUDA_CHECK(cudaEventRecord(prefetch_start_, stream_));
  CUDA_CHECK(cudaStreamWaitEvent(prefetch_stream_, prefetch_start_));
  int slot = 0;
  for (const DeviceLinear* w : weights) {
    if (!w->nvfp4 || takes_small_m_gemm(*w, rows) || slot == kPrefetchedWeights) continue;
    PrefetchSlot& s = prefetched_[slot];
    CUDA_CHECK(cudaStreamWaitEvent(prefetch_stream_, s.read));  // the buffer's last product has read it
    cuda::Gemm::dequantize(w->nvfp4_view(), prefetch_buffer(slot), gemm_scratch_elements_, prefetch_stream_);
    CUDA_CHECK(cudaEventRecord(s.ready, prefetch_stream_));
    s.weight = w;
    ++slot;
  }
}

uint16_t* LinearRunner::prefetch_buffer(int slot) const {
  return gemm_scratch_ + (1 + slot) * gemm_scratch_elements_;  // buffer 0 is the in-line dequantisation's
}

bool LinearRunner::multiply_prefetched(const DeviceLinear& w, const uint16_t* x, int64_t rows, void* y,
                                       DType y_dtype) {
  for (int slot = 0; slot < kPrefetchedWeights; ++slot) {
    PrefetchSlot& s = prefetched_[slot];
    if (s.weight != &w) continue;
    CUDA_CHECK(cudaStreamWaitEvent(stream_, s.ready));
    gemm_->nvfp4_dequantized(w.nvfp4_view(), prefetch_buffer(slot), x, rows, y, y_dtype);
    CUDA_CHECK(cudaEventRecord(s.read, stream_));
    s.weight = nullptr;
    ++counters_.gemm_nvfp4_prefetched_calls;
    return true;
  }
  return false;
}

void LinearRunner::linear(const DeviceLinear& w, const uint16_t* x, int64_t rows, void* y, DType y_dtype) {
  if (rows == 0) return;
  check_output_dtype(w, y_dtype);
  if (deterministic_ && rows > cuda::kGemvMaxM) {
    in_gemv_pieces(rows, [&](int64_t first, int64_t count) {
      linear(w, x + first * w.in_padded, count, output_row(y, y_dtype, w.out, first), y_dtype);
    });
    return;
  }
  if (takes_small_m_gemm(w, rows)) {
    const Output output{&w, y};
    multiply_on_small_m_gemm({&output, 1}, x, rows, y_dtype);
  } else if (rows <= cuda::kGemvMaxM) {
    ++counters_.gemv_linear_calls;
    if (w.nvfp4) {
      cuda::gemv_nvfp4_tuned(w.nvfp4_view(), x, rows, y, y_dtype,
                             tuning_for(GemvKernel::Nvfp4, w.out, w.in_padded, rows), stream_);
    } else {
      cuda::gemv_bf16_tuned(w.bf16, w.out, w.in_padded, x, rows, y, y_dtype,
                            tuning_for(GemvKernel::Bf16, w.out, w.in_padded, rows), stream_);
    }
  } else {
    if (!gemm_) fail("CudaBackend: {} rows for {} exceed the GEMV's {} and no cuBLAS path was planned", rows, w.name,
                     cuda::kGemvMaxM);
    if (w.nvfp4) {
      ++counters_.gemm_nvfp4_linear_calls;
      if (!multiply_prefetched(w, x, rows, y, y_dtype)) {
        gemm_->nvfp4(w.nvfp4_view(), gemm_scratch_, gemm_scratch_elements_, x, rows, y, y_dtype);
      }
    } else {
      ++counters_.gemm_bf16_linear_calls;
      gemm_->bf16(w.bf16, w.out, w.in_padded, x, rows, y, y_dtype);
    }
  }
  if (w.bias) CUDA_CHECK(cuda::launch_add_bias(static_cast<float*>(y), w.bias, rows, w.out, stream_));
}

void LinearRunner::group(std::initializer_list<Output> outputs, const uint16_t* x, int64_t rows, DType y_dtype) {
  if (deterministic_ && rows > cuda::kGemvMaxM) {
    const int64_t k = outputs.begin()->weight->in_padded;
    in_gemv_pieces(rows, [&](int64_t first, int64_t count) {
      std::vector<Output> piece;
      for (const Output& o : outputs) piece.push_back({o.weight, output_row(o.y, y_dtype, o.weight->out, first)});
      group_piece(piece, x + first * k, count, y_dtype);
    });
    return;
  }
  group_piece({outputs.begin(), outputs.size()}, x, rows, y_dtype);
}

void LinearRunner::multiply_on_small_m_gemm(std::span<const Output> outputs, const uint16_t* x, int64_t rows,
                                            DType y_dtype) {
  cuda::Nvfp4WgmmaTarget targets[cuda::kGemmWgmmaMaxTargets];
  int64_t n = 0, row_tiles = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    targets[i] = {outputs[i].weight->wgmma_view(), outputs[i].y};
    n += outputs[i].weight->out;
    row_tiles += cuda::gemm_nvfp4_wgmma_row_tiles(outputs[i].weight->out);
  }
  counters_.wgmma_linear_calls += static_cast<int64_t>(outputs.size());
  const int64_t k = outputs.front().weight->in_padded;
  cuda::gemm_nvfp4_wgmma(targets, static_cast<int>(outputs.size()), x, rows, y_dtype, wgmma_splits(n, row_tiles, k, rows),
                         *small_m_gemm_, stream_);
}

void LinearRunner::group_piece(std::span<const Output> outputs, const uint16_t* x, int64_t rows, DType y_dtype) {
  for (const Output& o : outputs) check_output_dtype(*o.weight, y_dtype);
  const bool small_m_gemm =
      static_cast<int>(outputs.size()) <= cuda::kGemmWgmmaMaxTargets &&
      std::all_of(outputs.begin(), outputs.end(), [&](const Output& o) { return takes_small_m_gemm(*o.weight, rows); });
  if (small_m_gemm) {
    multiply_on_small_m_gemm(outputs, x, rows, y_dtype);
    add_biases(outputs, rows);
    return;
  }
  const bool nvfp4 = outputs.begin()->weight->nvfp4;
  bool shared = rows <= cuda::kGemvMaxM && static_cast<int>(outputs.size()) <= cuda::kGemvMaxTargets;
  for (const Output& o : outputs) shared = shared && o.weight->nvfp4 == nvfp4;
  if (!shared) {
    for (const Output& o : outputs) linear(*o.weight, x, rows, o.y, y_dtype);
    return;
  }
  counters_.gemv_linear_calls += static_cast<int64_t>(outputs.size());
  std::vector<cuda::Nvfp4GemvTarget> nvfp4_targets;
  std::vector<cuda::Bf16GemvTarget> bf16_targets;
  for (const Output& o : outputs) {
    if (nvfp4) nvfp4_targets.push_back({o.weight->nvfp4_view(), o.y});
    else bf16_targets.push_back({o.weight->bf16, o.weight->out, o.y});
  }
  const int count = static_cast<int>(outputs.size());
  const int64_t k = outputs.begin()->weight->in_padded;
  int64_t total_rows = 0;
  for (const Output& o : outputs) total_rows += o.weight->out;
  if (nvfp4) {
    cuda::gemv_nvfp4_multi_tuned(nvfp4_targets.data(), count, x, rows, y_dtype,
                                 tuning_for(GemvKernel::Nvfp4, total_rows, k, rows), stream_);
  } else {
    cuda::gemv_bf16_multi_tuned(bf16_targets.data(), count, k, x, rows, y_dtype,
                                tuning_for(GemvKernel::Bf16, total_rows, k, rows), stream_);
  }
  add_biases(outputs, rows);
}

void LinearRunner::add_biases(std::span<const Output> outputs, int64_t rows) {
  for (const Output& o : outputs) {
    if (o.weight->bias) {
      CUDA_CHECK(cuda::launch_add_bias(static_cast<float*>(o.y), o.weight->bias, rows, o.weight->out, stream_));
    }
  }
}

// The paired kernel takes one weight format and no bias term, at the GEMV's row counts.
bool LinearRunner::fuses_swiglu(const DeviceLinear& gate, const DeviceLinear& up, int64_t rows) const {
  return (rows <= cuda::kGemvMaxM || deterministic_) && gate.nvfp4 == up.nvfp4 && !gate.bias && !up.bias &&
         !takes_small_m_gemm(gate, rows) && !takes_small_m_gemm(up, rows);
}

void LinearRunner::gate_up_swiglu(const DeviceLinear& gate, const DeviceLinear& up, const uint16_t* x, int64_t rows,
                                  uint16_t* out, int64_t out_stride) {
  if (deterministic_ && rows > cuda::kGemvMaxM) {
    in_gemv_pieces(rows, [&](int64_t first, int64_t count) {
      gate_up_swiglu(gate, up, x + first * gate.in_padded, count, out + first * out_stride, out_stride);
    });
    return;
  }
  counters_.gemv_linear_calls += 2;
  ++counters_.gemv_swiglu_calls;
  if (gate.nvfp4) {
    cuda::gemv_nvfp4_swiglu_tuned(gate.nvfp4_view(), up.nvfp4_view(), x, rows, out, out_stride,
                                  tuning_for(GemvKernel::Nvfp4Swiglu, gate.out, gate.in_padded, rows), stream_);
  } else {
    cuda::gemv_bf16_swiglu_tuned(gate.bf16, up.bf16, gate.out, gate.in_padded, x, rows, out, out_stride,
                                 tuning_for(GemvKernel::Bf16Swiglu, gate.out, gate.in_padded, rows), stream_);
  }
}

}  // namespace uberlm::gpu
