// Argument checks of the GEMV host API; the kernels are launched from gemv_nvfp4.cu and gemv_bf16.cu.
#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/gemv.h"

#include <cmath>
#include <cstdio>
#include <string_view>

#include <fmt/format.h>

#include "core/error.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/cuda_check.h"

namespace uberlm::cuda {

namespace {
void check_gemv_arguments(std::string_view op, int64_t n, int64_t k, const void* x, int64_t m, void* y,
                          DType y_dtype) {
  if (n <= 0 || k <= 0 || k % kGemvKMultiple != 0 || k >= (int64_t{1} << 31)) {
    fail("{}: weight [{}, {}] not supported: N must be positive and K a positive multiple of {} under 2^31", op, n,
         k, kGemvKMultiple);
  }
  if (m < 1 || m > kGemvMaxM) fail("{}: M = {} activation rows, supported 1..{}", op, m, kGemvMaxM);
  if (x == nullptr || !aligned(x, 16)) fail("{}: activations must be a 16-byte aligned device pointer", op);
  if (y == nullptr) fail("{}: null output pointer", op);
  if (y_dtype != DType::F32 && y_dtype != DType::BF16) {
    fail("{}: output dtype {} not supported (F32 or BF16)", op, dtype_name(y_dtype));
  }
}
constexpr int kMaxWarps = 8;  // blocks of at most 256 threads, which kGemvMaxRegisters (gemv_tile.cuh) assumes

// The block shapes swept for each compiled shape: warps per block and K splits (warps of a block, or
// blocks of a cluster for the bulk stream).
template <size_t kCount>
std::vector<GemvTuning> tunings_of(const GemvTuning (&shapes)[kCount]) {
  std::vector<GemvTuning> out;
  for (const GemvTuning& shape : shapes) {
    if (shape.pipeline == GemvPipeline::BulkStream) {
      for (int warps : {4, 8}) {
        for (int cluster : {1, 2, 4}) out.push_back({warps, shape.depth, shape.row_tiles, cluster, shape.pipeline});
      }
      continue;
    }
    for (int warps : {2, 4, 8}) {
      for (int k_split : {warps / 2, warps}) {
        out.push_back({warps, shape.depth, shape.row_tiles, k_split, shape.pipeline, shape.batch_invariant});
      }
    }
  }
  return out;
}

constexpr std::string_view kBatchInvariantSuffix = "_inv";

const char* pipeline_suffix(GemvPipeline pipeline) {
  switch (pipeline) {
    case GemvPipeline::AsyncCopy: return "_async";
    case GemvPipeline::BulkStream: return "_stream";
    default: return "";
  }
}

template <size_t kCount>
void check_tuning(std::string_view op, const GemvTuning& tuning, const GemvTuning (&shapes)[kCount]) {
  if (tuning.pipeline == GemvPipeline::BulkStream) {
    if (tuning.warps < 1 || tuning.warps > kGemvStreamMaxWarps ||
        (tuning.k_split != 1 && tuning.k_split != 2 && tuning.k_split != 4)) {
      fail("{}: bulk-stream tuning of {} warps and clusters of {} blocks not supported (1..{} warps, clusters of 1, "
           "2 or 4)",
           op, tuning.warps, tuning.k_split, kGemvStreamMaxWarps);
    }
  } else if (tuning.warps < 1 || tuning.warps > kMaxWarps || tuning.k_split < 1 || tuning.warps % tuning.k_split != 0) {
    fail("{}: tuning of {} warps per block, {} splitting K, not supported (1..{} warps, a multiple of the split)", op,
         tuning.warps, tuning.k_split, kMaxWarps);
  }
  for (const GemvTuning& shape : shapes) {
    if (shape.depth == tuning.depth && shape.row_tiles == tuning.row_tiles && shape.pipeline == tuning.pipeline &&
        shape.batch_invariant == tuning.batch_invariant) {
      return;
    }
  }
  fail("{}: no kernel compiled for pipeline depth {} with {} row tiles{}{}", op, tuning.depth, tuning.row_tiles,
       pipeline_suffix(tuning.pipeline), tuning.batch_invariant ? " (batch-invariant)" : "");
}

// The bulk stream's limits on the call (gemv_stream.cuh): few tokens, whole 256-wide blocks of K, and
// 16-byte aligned codes and scales for the bulk copies.
void check_stream_call(std::string_view op, const GemvTuning& tuning, const Nvfp4Weight& weight, int64_t m) {
  if (tuning.pipeline != GemvPipeline::BulkStream) return;
  if (!gemv_nvfp4_tuning_applies(tuning, m, weight.cols)) {
    fail("{}: the bulk-stream kernel ({}) takes M <= {} and K a multiple of {}, not M = {}, K = {}", op,
         gemv_tuning_name(tuning), kGemvStreamMaxM, kGemvStreamKMultiple, m, weight.cols);
  }
  if (!aligned(weight.packed, 16) || !aligned(weight.scales, 16)) {
    fail("{}: the bulk-stream kernel needs 16-byte aligned codes and scales", op);
  }
}

void check_nvfp4_weight(std::string_view op, const Nvfp4Weight& weight) {
  if (weight.packed == nullptr || !aligned(weight.packed, 16) || weight.scales == nullptr ||
      !aligned(weight.scales, 2)) {
    fail("{}: packed weights must be 16-byte aligned and scales 2-byte aligned device pointers", op);
  }
  if (!std::isfinite(weight.global_scale)) fail("{}: global scale {} is not finite", op, weight.global_scale);
  if (weight.code_order != Nvfp4CodeOrder::GemvTiled) {
    fail("{}: codes must be in the GEMV's tiled order (tile_nvfp4_codes_for_gemv, done by the CUDA backend at load)",
         op);
  }
}

// Every plain shape's two-row-tile variant is compiled for the paired launch (gemv_paired_tuning).
template <size_t kPlain, size_t kPaired>
constexpr bool pairs_compiled(const GemvTuning (&plain)[kPlain], const GemvTuning (&paired)[kPaired]) {
  for (const GemvTuning& shape : plain) {
    bool found = false;
    for (const GemvTuning& p : paired) {
      found = found || (p.depth == shape.depth && p.row_tiles == 2 && p.pipeline == shape.pipeline &&
                        p.batch_invariant == shape.batch_invariant);
    }
    if (!found) return false;
  }
  return true;
}
static_assert(pairs_compiled(detail::kGemvNvfp4Shapes, detail::kGemvNvfp4PairedShapes));
static_assert(pairs_compiled(detail::kGemvBf16Shapes, detail::kGemvBf16PairedShapes));

// The gate/up pair of a SwiGLU launch: equal shapes, and an output row that holds n values.
void check_swiglu_arguments(std::string_view op, int64_t gate_n, int64_t gate_k, int64_t up_n, int64_t up_k,
                            const void* x, int64_t m, void* out, int64_t out_stride) {
  if (gate_n != up_n || gate_k != up_k) {
    fail("{}: gate [{}, {}] and up [{}, {}] must have one shape", op, gate_n, gate_k, up_n, up_k);
  }
  check_gemv_arguments(op, gate_n, gate_k, x, m, out, DType::BF16);
  if (out_stride < gate_n) fail("{}: output row stride {} is less than the {} outputs per row", op, out_stride, gate_n);
}
}  // namespace

// Chosen from kernel_bench sweeps on an H100 (bench/notes/gemv.md, bench/results/gemv-h100-sweep-async.json):
// up to one token group the register pipeline with two row tiles, but 8 warps splitting a long K
// (mlp_down); beyond it the shared-memory pipeline, which keeps the activation registers free.
GemvTuning gemv_nvfp4_default_tuning(int64_t m, int64_t /*n*/, int64_t k) {
  if (m > 8) return {4, 4, 2, 4, GemvPipeline::AsyncCopy};
  if (k >= 16384) return {8, 4, 2, 8, GemvPipeline::AsyncCopy};
  return {4, 2, 2, 4};
}

GemvTuning gemv_bf16_default_tuning(int64_t m, int64_t /*n*/, int64_t /*k*/) {
  if (m <= 8) return {2, 2, 1, 2};
  return {2, 1, 2, 2};
}

GemvTuning gemv_nvfp4_batch_invariant_tuning(int64_t m, int64_t k) {
  const int k_split = k >= 16384 ? 8 : 4;
  if (m > 8 || k_split == 8) return {k_split, 4, 2, k_split, GemvPipeline::AsyncCopy, true};
  return {4, 2, 2, 4, GemvPipeline::Registers, true};
}

GemvTuning gemv_bf16_batch_invariant_tuning(int64_t m) {
  if (m <= 8) return {2, 2, 1, 2, GemvPipeline::Registers, true};
  return {2, 1, 2, 2, GemvPipeline::Registers, true};
}

GemvTuning gemv_paired_tuning(const GemvTuning& plain) {
  return {plain.warps, plain.depth, 2, plain.k_split, plain.pipeline, plain.batch_invariant};
}

bool gemv_nvfp4_tuning_applies(const GemvTuning& tuning, int64_t m, int64_t k) {
  return tuning.pipeline != GemvPipeline::BulkStream || (m <= kGemvStreamMaxM && k % kGemvStreamKMultiple == 0);
}

std::vector<GemvTuning> gemv_nvfp4_tunings() { return tunings_of(detail::kGemvNvfp4Shapes); }
std::vector<GemvTuning> gemv_bf16_tunings() { return tunings_of(detail::kGemvBf16Shapes); }
std::vector<GemvTuning> gemv_nvfp4_paired_tunings() { return tunings_of(detail::kGemvNvfp4PairedShapes); }
std::vector<GemvTuning> gemv_bf16_paired_tunings() { return tunings_of(detail::kGemvBf16PairedShapes); }

void gemv_nvfp4(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype, cudaStream_t stream) {
  const Nvfp4GemvTarget target{weight, y};
  gemv_nvfp4_multi(&target, 1, x, m, y_dtype, stream);
}

void gemv_bf16(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
               cudaStream_t stream) {
  const Bf16GemvTarget target{weight, n, y};
  gemv_bf16_multi(&target, 1, k, x, m, y_dtype, stream);
}

namespace {
void check_target_count(std::string_view op, int count) {
  if (count < 1 || count > kGemvMaxTargets) fail("{}: {} targets, supported 1..{}", op, count, kGemvMaxTargets);
}

void launch_nvfp4_checked(const Nvfp4GemvTarget* targets, int count, const void* x, int64_t m, DType y_dtype,
                          const GemvTuning& tuning, cudaStream_t stream) {
  check_target_count("gemv_nvfp4", count);
  for (int i = 0; i < count; ++i) {
    const Nvfp4Weight& weight = targets[i].weight;
    check_gemv_arguments("gemv_nvfp4", weight.rows, weight.cols, x, m, targets[i].y, y_dtype);
    check_nvfp4_weight("gemv_nvfp4", weight);
    if (weight.cols != targets[0].weight.cols) {
      fail("gemv_nvfp4: targets of one launch must share K ({} and {})", targets[0].weight.cols, weight.cols);
    }
  }
  check_tuning("gemv_nvfp4", tuning, detail::kGemvNvfp4Shapes);
  for (int i = 0; i < count; ++i) check_stream_call("gemv_nvfp4", tuning, targets[i].weight, m);
  CUDA_CHECK(detail::launch_gemv_nvfp4(targets, count, x, static_cast<int>(m), y_dtype == DType::BF16, tuning, stream));
}

void launch_bf16_checked(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int64_t m, DType y_dtype,
                         const GemvTuning& tuning, cudaStream_t stream) {
  check_target_count("gemv_bf16", count);
  for (int i = 0; i < count; ++i) {
    check_gemv_arguments("gemv_bf16", targets[i].n, k, x, m, targets[i].y, y_dtype);
    if (targets[i].weight == nullptr || !aligned(targets[i].weight, 16)) {
      fail("gemv_bf16: weights must be a 16-byte aligned device pointer");
    }
  }
  check_tuning("gemv_bf16", tuning, detail::kGemvBf16Shapes);
  CUDA_CHECK(detail::launch_gemv_bf16(targets, count, k, x, static_cast<int>(m), y_dtype == DType::BF16, tuning,
                                      stream));
}

int64_t total_rows(const Nvfp4GemvTarget* targets, int count) {
  int64_t rows = 0;
  for (int i = 0; i < count; ++i) rows += targets[i].weight.rows;
  return rows;
}
}  // namespace

void gemv_nvfp4_multi(const Nvfp4GemvTarget* targets, int count, const void* x, int64_t m, DType y_dtype,
                      cudaStream_t stream) {
  check_target_count("gemv_nvfp4", count);
  const GemvTuning tuning = gemv_nvfp4_default_tuning(m, total_rows(targets, count), targets[0].weight.cols);
  launch_nvfp4_checked(targets, count, x, m, y_dtype, tuning, stream);
}

void gemv_bf16_multi(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int64_t m, DType y_dtype,
                     cudaStream_t stream) {
  check_target_count("gemv_bf16", count);
  int64_t rows = 0;
  for (int i = 0; i < count; ++i) rows += targets[i].n;
  launch_bf16_checked(targets, count, k, x, m, y_dtype, gemv_bf16_default_tuning(m, rows, k), stream);
}

void gemv_nvfp4_multi_tuned(const Nvfp4GemvTarget* targets, int count, const void* x, int64_t m, DType y_dtype,
                            const GemvTuning& tuning, cudaStream_t stream) {
  launch_nvfp4_checked(targets, count, x, m, y_dtype, tuning, stream);
}

void gemv_bf16_multi_tuned(const Bf16GemvTarget* targets, int count, int64_t k, const void* x, int64_t m, DType y_dtype,
                           const GemvTuning& tuning, cudaStream_t stream) {
  launch_bf16_checked(targets, count, k, x, m, y_dtype, tuning, stream);
}

std::string gemv_tuning_name(const GemvTuning& t) {
  return fmt::format("w{}_d{}_r{}_k{}{}{}", t.warps, t.depth, t.row_tiles, t.k_split, pipeline_suffix(t.pipeline),
                     t.batch_invariant ? kBatchInvariantSuffix : "");
}

std::optional<GemvTuning> parse_gemv_tuning(const std::string& name) {
  GemvTuning t;
  char suffix[16] = {0};
  const int fields = std::sscanf(name.c_str(), "w%d_d%d_r%d_k%d%15s", &t.warps, &t.depth, &t.row_tiles, &t.k_split, suffix);
  if (fields < 4) return std::nullopt;
  std::string_view given(suffix);
  t.batch_invariant = given.ends_with(kBatchInvariantSuffix);
  if (t.batch_invariant) given.remove_suffix(kBatchInvariantSuffix.size());
  for (GemvPipeline pipeline : {GemvPipeline::Registers, GemvPipeline::AsyncCopy, GemvPipeline::BulkStream}) {
    if (given == pipeline_suffix(pipeline)) t.pipeline = pipeline;
  }
  if (gemv_tuning_name(t) != name) return std::nullopt;
  return t;
}

void gemv_nvfp4_tuned(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype,
                      const GemvTuning& tuning, cudaStream_t stream) {
  const Nvfp4GemvTarget target{weight, y};
  launch_nvfp4_checked(&target, 1, x, m, y_dtype, tuning, stream);
}

void gemv_bf16_tuned(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
                     const GemvTuning& tuning, cudaStream_t stream) {
  const Bf16GemvTarget target{weight, n, y};
  launch_bf16_checked(&target, 1, k, x, m, y_dtype, tuning, stream);
}

void gemv_nvfp4_swiglu_tuned(const Nvfp4Weight& gate, const Nvfp4Weight& up, const void* x, int64_t m, void* out,
                             int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream) {
  constexpr std::string_view op = "gemv_nvfp4_swiglu";
  check_swiglu_arguments(op, gate.rows, gate.cols, up.rows, up.cols, x, m, out, out_stride);
  check_nvfp4_weight(op, gate);
  check_nvfp4_weight(op, up);
  check_tuning(op, tuning, detail::kGemvNvfp4PairedShapes);
  check_stream_call(op, tuning, gate, m);
  check_stream_call(op, tuning, up, m);
  CUDA_CHECK(detail::launch_gemv_nvfp4_swiglu(gate, up, x, static_cast<int>(m), out, out_stride, tuning, stream));
}

void gemv_bf16_swiglu_tuned(const void* gate, const void* up, int64_t n, int64_t k, const void* x, int64_t m, void* out,
                            int64_t out_stride, const GemvTuning& tuning, cudaStream_t stream) {
  constexpr std::string_view op = "gemv_bf16_swiglu";
  check_swiglu_arguments(op, n, k, n, k, x, m, out, out_stride);
  if (gate == nullptr || !aligned(gate, 16) || up == nullptr || !aligned(up, 16)) {
    fail("{}: weights must be 16-byte aligned device pointers", op);
  }
  check_tuning(op, tuning, detail::kGemvBf16PairedShapes);
  CUDA_CHECK(detail::launch_gemv_bf16_swiglu(gate, up, n, k, x, static_cast<int>(m), out, out_stride, tuning, stream));
}

// The tuning the plain two-target launch of the pair would run (rows of both), as two row tiles.
void gemv_nvfp4_swiglu(const Nvfp4Weight& gate, const Nvfp4Weight& up, const void* x, int64_t m, void* out,
                       int64_t out_stride, cudaStream_t stream) {
  const GemvTuning tuning = gemv_paired_tuning(gemv_nvfp4_default_tuning(m, gate.rows + up.rows, gate.cols));
  gemv_nvfp4_swiglu_tuned(gate, up, x, m, out, out_stride, tuning, stream);
}

void gemv_bf16_swiglu(const void* gate, const void* up, int64_t n, int64_t k, const void* x, int64_t m, void* out,
                      int64_t out_stride, cudaStream_t stream) {
  const GemvTuning tuning = gemv_paired_tuning(gemv_bf16_default_tuning(m, 2 * n, k));
  gemv_bf16_swiglu_tuned(gate, up, n, k, x, m, out, out_stride, tuning, stream);
}

}  // namespace uberlm::cuda
#endif
