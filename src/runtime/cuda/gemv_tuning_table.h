#pragma once
// The per-GPU winners table of the decode GEMV (`uberlm tune` writes it, the CUDA backend reads it): for each
// launch the model makes (kernel, total rows N, K) and batch bucket, the compiled tuning that was fastest
// on this GPU. A launch the table does not cover takes the built-in default, explicitly: LinearRunner
// counts it, logs it once, and makes it an error in strict mode.
//
// The same for the wgmma small-M GEMM (ops/cuda/gemm_nvfp4_wgmma.h), whose one tuning is its K split: per launch
// (all targets' rows, K) and token bucket, the split count that was fastest (prompt steps' 128-token bucket: decode
// steps keep the built-in split, LinearRunner).
//
// File (JSON): {"gpu", "sm_count", "cuda_runtime", "cuda_driver", "date", "command", "copy_gbps",
//   "cells": [{"kernel", "n", "k", "m", "winner", "winner_us", "default", "default_us"}],
//   "wgmma_cells": [{"n", "k", "m", "winner_splits", "winner_us", "default_splits", "default_us"}]}
// where m is a bucket's upper end (gemv_m_bucket; gemm_nvfp4_wgmma_tokens_bucket) and winner/default are tuning names
// (gemv_tuning_name). A table without "wgmma_cells" has none.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "ops/cuda/gemm_nvfp4_wgmma.h"
#include "ops/cuda/gemv.h"

namespace uberlm::gpu {

enum class GemvKernel { Nvfp4, Bf16, Nvfp4Swiglu, Bf16Swiglu };
const char* gemv_kernel_name(GemvKernel kernel);

// Batch sizes are tuned at 1, 2, 4, 8, 16, 32 and 64; a launch of m rows takes the smallest bucket >= m.
inline constexpr int kGemvMBuckets[] = {1, 2, 4, 8, 16, 32, 64};
int gemv_m_bucket(int64_t m);

struct GemvCell {
  GemvKernel kernel;
  int64_t n;  // all targets' rows together (gate/up: one matrix's rows)
  int64_t k;
  int m;      // bucket
  auto operator<=>(const GemvCell&) const = default;
};

struct GemvCellResult {
  cuda::GemvTuning winner;
  double winner_us = 0;
  cuda::GemvTuning built_in;
  double built_in_us = 0;
};

struct WgmmaCell {
  int64_t n;  // all targets' rows together
  int64_t k;
  int m;      // bucket
  auto operator<=>(const WgmmaCell&) const = default;
};

struct WgmmaCellResult {
  int winner_splits = 1;
  double winner_us = 0;
  int built_in_splits = 1;
  double built_in_us = 0;
};

// The identity of the GPU a table belongs to: its name and SM count.
struct GpuIdentity {
  std::string name;
  int sm_count = 0;
  int cuda_runtime = 0, cuda_driver = 0;
  static GpuIdentity current();
};

class GemvTuningTable {
 public:
  GpuIdentity gpu;
  std::string date, command;
  double copy_gbps = 0;
  std::map<GemvCell, GemvCellResult> cells;
  std::map<WgmmaCell, WgmmaCellResult> wgmma_cells;

  std::optional<cuda::GemvTuning> find(GemvKernel kernel, int64_t n, int64_t k, int64_t m) const;
  std::optional<int> find_wgmma_splits(int64_t n, int64_t k, int64_t m) const;
  // Throws Error naming the file and the field at fault.
  static GemvTuningTable load(const std::filesystem::path& path);
  void save(const std::filesystem::path& path) const;  // atomically (a temporary file renamed)
};

// Where `uberlm tune` writes the table of `gpu`: $UBERLM_CACHE_DIR, else $XDG_CACHE_HOME/uberlm, else
// ~/.cache/uberlm; then tuning/<gpu name>.json.
std::filesystem::path default_tuning_table_path(const GpuIdentity& gpu);
// Where the backend looks for it: that file, else the table shipped with uberlm for that GPU (tune/ in the
// source tree, e.g. tune/nvidia-h200.json); nullopt when neither exists.
std::optional<std::filesystem::path> find_tuning_table(const GpuIdentity& gpu);

// The built-in tuning of a launch (before any table).
cuda::GemvTuning built_in_tuning(GemvKernel kernel, int64_t n, int64_t k, int64_t m);

}  // namespace uberlm::gpu
