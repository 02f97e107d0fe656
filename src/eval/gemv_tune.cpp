#include "eval/gemv_tune.h"

#include <algorithm>
#include <cstdio>
#include <memory>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/progress_bar.h"
#include "model/model.h"
#include "runtime/engine_stack.h"

#ifdef UBERLM_WITH_CUDA
#include "eval/decoding_batch.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/gemm_nvfp4_wgmma.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/kernel_timing.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "runtime/cuda/gemv_tuning_table.h"
#endif

namespace uberlm {

#ifdef UBERLM_WITH_CUDA

namespace {

using gpu::GemvCell;
using gpu::GemvKernel;
using gpu::WgmmaCell;

constexpr uint64_t kSyntheticSeed = 20260101;
constexpr int kContext = 16;

// The GEMV launches of the model's decode steps at every batch bucket, and the wgmma GEMM's launch shapes at 128
// tokens, where prompt steps of 65..128 rows take it (decode steps keep its built-in split: LinearRunner).
struct DecodeCells {
  std::vector<GemvCell> gemv;
  std::vector<WgmmaCell> wgmma;
};
DecodeCells decode_cells(const GemvTuneOptions& options) {
  EngineStackOptions stack_options;
  stack_options.device = "cuda";
  stack_options.max_num_seqs = cuda::kGemvMaxM;
  // Every prompt in one step (on cuBLAS, not a GEMV cell), so that all sequences then decode together.
  stack_options.max_num_batched_tokens = cuda::kGemvMaxM * kContext;
  const int setup = setup_tokens(cuda::kGemvMaxM, kContext, stack_options.max_num_batched_tokens);
  stack_options.max_model_len = kContext + setup + kWarmSteps + 1;
  stack_options.kv_cache_tokens = static_cast<int64_t>(cuda::kGemvMaxM) * stack_options.max_model_len;
  stack_options.tuning_table = "none";
  stack_options.loop_thread = false;
  std::unique_ptr<Model> model;
  std::unique_ptr<EngineStack> stack;
  if (!options.model.empty()) {
    model = Model::load(options.model);
    stack = std::make_unique<EngineStack>(*model, nullptr, stack_options);
  } else {
    const SyntheticFormat format = options.weights == "bf16" ? SyntheticFormat::Bf16 : SyntheticFormat::Nvfp4;
    stack = std::make_unique<EngineStack>(options.shape, format, kSyntheticSeed, nullptr, stack_options);
  }
  const int vocab = stack->backend().config().vocab_size;
  for (int batch : gpu::kGemvMBuckets) {
    DecodingBatch sequences(stack->engine(), batch, kContext, setup + kWarmSteps, vocab);
  }
  DecodeCells cells{stack->gpu_backend()->gemv_cells(), {}};
  std::set<WgmmaCell> wgmma;
  for (const WgmmaCell& cell : stack->gpu_backend()->wgmma_cells()) {
    wgmma.insert({cell.n, cell.k, static_cast<int>(cuda::kGemmWgmmaMaxM)});
  }
  cells.wgmma.assign(wgmma.begin(), wgmma.end());
  return cells;
}

bool is_nvfp4(GemvKernel kernel) { return kernel == GemvKernel::Nvfp4 || kernel == GemvKernel::Nvfp4Swiglu; }

std::vector<cuda::GemvTuning> compiled_tunings(GemvKernel kernel) {
  switch (kernel) {
    case GemvKernel::Nvfp4: return cuda::gemv_nvfp4_tunings();
    case GemvKernel::Bf16: return cuda::gemv_bf16_tunings();
    case GemvKernel::Nvfp4Swiglu: return cuda::gemv_nvfp4_paired_tunings();
    case GemvKernel::Bf16Swiglu: return cuda::gemv_bf16_paired_tunings();
  }
  return {};
}

// The compiled tunings that can run every M of the cell's bucket at its K.
std::vector<cuda::GemvTuning> tunings_of(const GemvCell& cell) {
  std::vector<cuda::GemvTuning> out;
  for (const cuda::GemvTuning& tuning : compiled_tunings(cell.kernel)) {
    if (!is_nvfp4(cell.kernel) || cuda::gemv_nvfp4_tuning_applies(tuning, cell.m, cell.k)) out.push_back(tuning);
  }
  return out;
}
bool is_paired(GemvKernel kernel) { return kernel == GemvKernel::Nvfp4Swiglu || kernel == GemvKernel::Bf16Swiglu; }

// Random weights of one cell's shape: enough copies (each a matrix, or a gate/up pair) that their total is
// at least 4x L2, so every timed launch reads its weights from DRAM.
class CellWeights {
 public:
  CellWeights(const GemvCell& cell, int64_t l2_bytes) : cell_(cell) {
    const int matrices = is_paired(cell.kernel) ? 2 : 1;
    const int64_t elements = cell.n * cell.k;
    std::vector<uint8_t> codes(is_nvfp4(cell.kernel) ? elements / 2 : elements * 2), scales;
    cuda::fill_pseudo_random(codes, static_cast<uint64_t>(cell.n * 31 + cell.k));
    if (is_nvfp4(cell.kernel)) {
      scales.resize(elements / 16);
      cuda::fill_pseudo_random(scales, static_cast<uint64_t>(cell.k));
      cuda::make_e4m3_scales(scales);
    } else {
      cuda::make_bf16_values(codes);
    }
    const int64_t bytes = matrices * static_cast<int64_t>(codes.size() + scales.size());
    copies_ = static_cast<int>(std::max<int64_t>(2, 4 * l2_bytes / bytes + 1));
    for (int i = 0; i < copies_ * matrices; ++i) {
      codes_.emplace_back(codes);
      if (!scales.empty()) scales_.emplace_back(scales);
    }
  }
  int copies() const { return copies_; }
  // Matrix `index` (of copy index / matrices) as an NVFP4 weight; random codes are random in any order.
  Nvfp4Weight nvfp4(int index) const {
    return {cell_.n, cell_.k, codes_[index].as<uint8_t>(), scales_[index].as<uint8_t>(), 1.0f / 4096, 0.0f,
            Nvfp4CodeOrder::GemvTiled};
  }
  const void* bf16(int index) const { return codes_[index].data(); }

 private:
  GemvCell cell_;
  int copies_ = 0;
  std::vector<DeviceBuffer> codes_, scales_;
};

// Back to back (ten launches between two events), as the decode step's graph runs them: timing each launch
// alone charges it the launch latency and a ramp-up and drain that dependent launches overlap, and
// favoured the shapes that ramp up fastest over the ones that stream fastest (bench/notes/gemv.md).
double time_tuning_us(const GemvCell& cell, const CellWeights& weights, const cuda::GemvTuning& tuning,
                      const DeviceBuffer& x, DeviceBuffer& out, int iters) {
  const int64_t m = cell.m;
  return 1e3 * cuda::time_back_to_back_ms(std::max(5, iters / 10), 10, [&](int i) {
    const int c = i % weights.copies();
    switch (cell.kernel) {
      case GemvKernel::Nvfp4:
        cuda::gemv_nvfp4_tuned(weights.nvfp4(c), x.data(), m, out.data(), DType::F32, tuning, nullptr);
        break;
      case GemvKernel::Bf16:
        cuda::gemv_bf16_tuned(weights.bf16(c), cell.n, cell.k, x.data(), m, out.data(), DType::F32, tuning, nullptr);
        break;
      case GemvKernel::Nvfp4Swiglu:
        cuda::gemv_nvfp4_swiglu_tuned(weights.nvfp4(2 * c), weights.nvfp4(2 * c + 1), x.data(), m, out.data(), cell.n,
                                      tuning, nullptr);
        break;
      case GemvKernel::Bf16Swiglu:
        cuda::gemv_bf16_swiglu_tuned(weights.bf16(2 * c), weights.bf16(2 * c + 1), cell.n, cell.k, x.data(), m,
                                     out.data(), cell.n, tuning, nullptr);
        break;
    }
  });
}

// One wgmma GEMM cell: a single weight of the cell's rows (a grouped launch's targets together), random fragment
// tiles in copies totalling at least 4x L2; every K split it can run, back to back as time_tuning_us.
class WgmmaCellTimer {
 public:
  WgmmaCellTimer(const WgmmaCell& cell, int64_t l2_bytes)
      : cell_(cell), row_tiles_(cuda::gemm_nvfp4_wgmma_row_tiles(cell.n)) {
    std::vector<uint8_t> tiles(cuda::nvfp4_wgmma_layout_bytes(cell.n, cell.k));
    cuda::fill_pseudo_random(tiles, static_cast<uint64_t>(cell.n * 31 + cell.k));
    cuda::make_e4m3_scales(tiles);  // every byte a valid E4M3 code: the bf16 scales finite
    const int copies = static_cast<int>(std::max<int64_t>(2, 4 * l2_bytes / static_cast<int64_t>(tiles.size()) + 1));
    for (int c = 0; c < copies; ++c) tiles_.emplace_back(tiles);
    std::vector<uint8_t> activations(static_cast<size_t>(cell.m * cell.k * 2));
    cuda::fill_pseudo_random(activations, static_cast<uint64_t>(cell.m + 17));
    cuda::make_bf16_values(activations);
    x_ = DeviceBuffer(activations);
    y_ = DeviceBuffer(static_cast<size_t>(cell.m * cell.n * 2));
    partials_ = DeviceBuffer(static_cast<size_t>(
        cuda::gemm_nvfp4_wgmma_partial_floats(row_tiles_, cell.m, cuda::kGemmWgmmaMaxSplits) * sizeof(float)));
    arrivals_ = DeviceBuffer(static_cast<size_t>(row_tiles_ * sizeof(int)));
    arrivals_.fill_bytes(0);
  }
  int built_in_splits() const { return cuda::gemm_nvfp4_wgmma_splits(row_tiles_, cell_.k); }
  int most_splits() const {
    return static_cast<int>(std::min<int64_t>(cuda::kGemmWgmmaMaxSplits, cell_.k / cuda::kNvfp4WgmmaTileK));
  }
  double time_us(int splits, int iters) {
    const cuda::GemmWgmmaWorkspace workspace{partials_.as<float>(), static_cast<int64_t>(partials_.bytes() / sizeof(float)),
                                             arrivals_.as<int>(), row_tiles_};
    return 1e3 * cuda::time_back_to_back_ms(std::max(5, iters / 10), 10, [&](int i) {
      const cuda::Nvfp4WgmmaTarget target{
          {cell_.n, cell_.k, tiles_[i % tiles_.size()].as<uint8_t>(), 1.0f / 4096}, y_.data()};
      cuda::gemm_nvfp4_wgmma(&target, 1, x_.data(), cell_.m, DType::BF16, splits, workspace, nullptr);
    });
  }

 private:
  WgmmaCell cell_;
  int64_t row_tiles_;
  std::vector<DeviceBuffer> tiles_;
  DeviceBuffer x_, y_, partials_, arrivals_;
};

double copy_bandwidth_gbps() {
  const size_t bytes = size_t{1} << 30;
  DeviceBuffer src(bytes), dst(bytes);
  src.fill_bytes(0x5a);
  const double ms = cuda::time_median_ms(20, [&](int) {
    CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), bytes, cudaMemcpyDeviceToDevice, nullptr));
  });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

gpu::WgmmaCellResult tune_wgmma_cell(const WgmmaCell& cell, int64_t l2_bytes, int iters, ProgressBar& progress) {
  WgmmaCellTimer timer(cell, l2_bytes);
  gpu::WgmmaCellResult result;
  result.built_in_splits = timer.built_in_splits();
  result.winner_us = -1;
  const std::string label = fmt::format("gemm_nvfp4_wgmma {}x{} M<={}", cell.n, cell.k, cell.m);
  for (int splits = 1; splits <= cuda::kGemmWgmmaMaxSplits; ++splits) {
    if (splits <= timer.most_splits()) {
      const double us = timer.time_us(splits, iters);
      if (splits == result.built_in_splits) result.built_in_us = us;
      if (result.winner_us < 0 || us < result.winner_us) {
        result.winner_splits = splits;
        result.winner_us = us;
      }
    }
    progress.advance(1, label);
  }
  return result;
}

}  // namespace

std::filesystem::path run_gemv_tune(const GemvTuneOptions& options) {
  if (!cuda_device_present()) fail("tune: no CUDA device is visible");
  if (options.weights != "nvfp4" && options.weights != "bf16") fail("tune: --weights {}: nvfp4 or bf16", options.weights);
  gpu::GemvTuningTable table;
  table.gpu = gpu::GpuIdentity::current();
  table.command = options.command;
  const DecodeCells decode = decode_cells(options);
  const std::vector<GemvCell>& cells = decode.gemv;
  if (cells.empty()) fail("tune: the model's decode steps made no GEMV launch");
  table.copy_gbps = copy_bandwidth_gbps();
  cudaDeviceProp props{};
  CUDA_CHECK(cudaGetDeviceProperties(&props, 0));
  std::printf("tune: %s, %d SMs, copy bandwidth %.0f GB/s; %zu GEMV and %zu wgmma GEMM launch shapes of the model's "
              "decode steps\n",
              table.gpu.name.c_str(), table.gpu.sm_count, table.copy_gbps, cells.size(), decode.wgmma.size());
  int64_t timings = 0;
  for (const GemvCell& cell : cells) timings += static_cast<int64_t>(tunings_of(cell).size());
  timings += static_cast<int64_t>(decode.wgmma.size()) * cuda::kGemmWgmmaMaxSplits;
  ProgressBar progress("tune gemv", timings);
  for (const GemvCell& cell : cells) {
    const CellWeights weights(cell, props.l2CacheSize);
    std::vector<uint8_t> activations(static_cast<size_t>(cell.m * cell.k * 2));
    cuda::fill_pseudo_random(activations, static_cast<uint64_t>(cell.m + 17));
    cuda::make_bf16_values(activations);
    const DeviceBuffer x(activations);
    DeviceBuffer out(static_cast<size_t>(cell.m * (is_paired(cell.kernel) ? cell.n * 2 : cell.n * 4)));
    gpu::GemvCellResult result;
    result.built_in = gpu::built_in_tuning(cell.kernel, cell.n, cell.k, cell.m);
    result.winner_us = -1;
    const std::string label = fmt::format("{} {}x{} M<={}", gpu::gemv_kernel_name(cell.kernel), cell.n, cell.k, cell.m);
    for (const cuda::GemvTuning& tuning : tunings_of(cell)) {
      const double us = time_tuning_us(cell, weights, tuning, x, out, options.iters);
      if (cuda::gemv_tuning_name(tuning) == cuda::gemv_tuning_name(result.built_in)) result.built_in_us = us;
      if (result.winner_us < 0 || us < result.winner_us) {
        result.winner = tuning;
        result.winner_us = us;
      }
      progress.advance(1, label);
    }
    table.cells[cell] = result;
  }
  for (const WgmmaCell& cell : decode.wgmma) table.wgmma_cells[cell] = tune_wgmma_cell(cell, props.l2CacheSize, options.iters, progress);
  progress.finish();
  std::printf("%-20s %7s %6s %3s  %-20s %9s  %-20s %9s %7s\n", "kernel", "N", "K", "M<=", "winner", "us", "built-in",
              "us", "gain");
  for (const auto& [cell, result] : table.cells) {
    std::printf("%-20s %7lld %6lld %3d  %-20s %9.2f  %-20s %9.2f %6.1f%%\n", gpu::gemv_kernel_name(cell.kernel),
                static_cast<long long>(cell.n), static_cast<long long>(cell.k), cell.m,
                cuda::gemv_tuning_name(result.winner).c_str(), result.winner_us,
                cuda::gemv_tuning_name(result.built_in).c_str(), result.built_in_us,
                100.0 * (result.built_in_us / result.winner_us - 1.0));
  }
  std::printf("%-20s %7s %6s %3s  %-20s %9s  %-20s %9s %7s\n", "kernel", "N", "K", "M<=", "winner splits", "us",
              "built-in splits", "us", "gain");
  for (const auto& [cell, result] : table.wgmma_cells) {
    std::printf("%-20s %7lld %6lld %3d  %-20d %9.2f  %-20d %9.2f %6.1f%%\n", "gemm_nvfp4_wgmma",
                static_cast<long long>(cell.n), static_cast<long long>(cell.k), cell.m, result.winner_splits,
                result.winner_us, result.built_in_splits, result.built_in_us,
                100.0 * (result.built_in_us / result.winner_us - 1.0));
  }
  const std::filesystem::path path =
      options.out.empty() ? gpu::default_tuning_table_path(table.gpu) : std::filesystem::path(options.out);
  table.save(path);
  std::printf("tune: wrote %s (%zu cells)\n", path.string().c_str(), table.cells.size());
  return path;
}

#else
std::filesystem::path run_gemv_tune(const GemvTuneOptions&) { fail("tune: this binary was built without CUDA"); }
#endif

}  // namespace uberlm
