// The GEMV winners table's file (runtime/cuda/gemv_tuning_table.h), checked without a GPU: what `uberlm tune`
// writes loads back cell for cell, batch sizes fall into their buckets, tuning names round-trip, and a bad
// file is an error naming the file and the field.
#ifdef UBERLM_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "core/error.h"
#include "expect_error.h"
#include "ops/cuda/gemv.h"
#include "runtime/cuda/gemv_tuning_table.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

fs::path scratch_file(const std::string& name) {
  return fs::temp_directory_path() / ("uberlm_tuning_" + name + "_" + std::to_string(::getpid()) + ".json");
}

TEST(GemvTuningTable, SavedTableLoadsBackAndAnswersByBucket) {
  gpu::GemvTuningTable table;
  table.gpu = {"NVIDIA H200", 132, 13000, 13000};
  table.copy_gbps = 4250;
  const cuda::GemvTuning winner{8, 4, 2, 8, cuda::GemvPipeline::AsyncCopy}, built_in{4, 2, 2, 4};
  table.cells[{gpu::GemvKernel::Nvfp4, 16480, 5120, 8}] = {winner, 15.0, built_in, 16.0};
  table.cells[{gpu::GemvKernel::Bf16Swiglu, 17408, 5120, 1}] = {built_in, 27.0, built_in, 27.0};
  table.wgmma_cells[{5120, 6144, 64}] = {3, 25.0, 6, 31.4};
  table.wgmma_cells[{5120, 6144, 128}] = {1, 50.0, 6, 56.6};
  const fs::path path = scratch_file("roundtrip");
  table.save(path);
  const gpu::GemvTuningTable loaded = gpu::GemvTuningTable::load(path);
  fs::remove(path);
  EXPECT_EQ(loaded.gpu.name, "NVIDIA H200");
  EXPECT_EQ(loaded.gpu.sm_count, 132);
  ASSERT_EQ(loaded.cells.size(), 2u);
  for (int64_t m : {5, 6, 7, 8}) {
    const auto found = loaded.find(gpu::GemvKernel::Nvfp4, 16480, 5120, m);
    ASSERT_TRUE(found.has_value()) << m;
    EXPECT_EQ(cuda::gemv_tuning_name(*found), "w8_d4_r2_k8_async");
  }
  EXPECT_FALSE(loaded.find(gpu::GemvKernel::Nvfp4, 16480, 5120, 4).has_value());   // bucket 4: not tuned
  EXPECT_FALSE(loaded.find(gpu::GemvKernel::Nvfp4, 16480, 5120, 9).has_value());   // bucket 16
  EXPECT_FALSE(loaded.find(gpu::GemvKernel::Bf16, 17408, 5120, 1).has_value());    // another kernel
  ASSERT_EQ(loaded.wgmma_cells.size(), 2u);
  for (int64_t m : {33, 40, 64}) EXPECT_EQ(loaded.find_wgmma_splits(5120, 6144, m), 3) << m;
  for (int64_t m : {65, 100, 128}) EXPECT_EQ(loaded.find_wgmma_splits(5120, 6144, m), 1) << m;
  EXPECT_FALSE(loaded.find_wgmma_splits(5120, 6144, 32).has_value());   // bucket 32: not tuned
  EXPECT_FALSE(loaded.find_wgmma_splits(5120, 5120, 64).has_value());   // another K
  EXPECT_EQ(loaded.wgmma_cells.at({5120, 6144, 64}).built_in_splits, 6);
}

TEST(GemvTuningTable, BucketsAndTuningNames) {
  EXPECT_EQ(gpu::gemv_m_bucket(1), 1);
  EXPECT_EQ(gpu::gemv_m_bucket(3), 4);
  EXPECT_EQ(gpu::gemv_m_bucket(33), 64);
  EXPECT_THROW(gpu::gemv_m_bucket(65), Error);
  for (const std::string name : {"w4_d2_r2_k4", "w8_d8_r1_k8_async", "w2_d1_r2_k1", "w8_d12_r1_k2_stream"}) {
    const auto tuning = cuda::parse_gemv_tuning(name);
    ASSERT_TRUE(tuning.has_value()) << name;
    EXPECT_EQ(cuda::gemv_tuning_name(*tuning), name);
  }
  for (const std::string name : {"w4_d2_r2", "w4_d2_r2_k4_sync", "x4_d2_r2_k4", "w4_d2_r2_k4 ", "w4_d2_r2_k4_streams"}) {
    EXPECT_FALSE(cuda::parse_gemv_tuning(name).has_value()) << name;
  }
}

TEST(GemvTuningTable, BadFilesNameTheFileAndTheField) {
  const fs::path path = scratch_file("bad");
  auto write = [&](const std::string& text) { std::ofstream(path) << text; };
  write("{\"gpu\": \"X\", \"sm_count\": 1, \"cells\": [{\"kernel\": \"gemv_nvfp4\", \"n\": 64, \"k\": 64, \"m\": 3, "
        "\"winner\": \"w4_d2_r2_k4\", \"default\": \"w4_d2_r2_k4\"}]}");
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {path.string(), "cells[0]", "m bucket"});
  write("{\"gpu\": \"X\", \"sm_count\": 1, \"cells\": [{\"kernel\": \"gemv_fp8\", \"n\": 64, \"k\": 64, \"m\": 4, "
        "\"winner\": \"w4_d2_r2_k4\", \"default\": \"w4_d2_r2_k4\"}]}");
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {"cells[0]", "unknown kernel 'gemv_fp8'"});
  write("{\"gpu\": \"X\", \"sm_count\": 1, \"cells\": [{\"kernel\": \"gemv_nvfp4\", \"n\": 64, \"k\": 64, \"m\": 4, "
        "\"winner\": \"fast\", \"default\": \"w4_d2_r2_k4\"}]}");
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {"cells[0].winner", "'fast' is not a tuning name"});
  write("{\"gpu\": \"X\", \"sm_count\": 1, \"cells\": [], \"wgmma_cells\": [{\"n\": 64, \"k\": 64, \"m\": 48, "
        "\"winner_splits\": 1, \"default_splits\": 1}]}");
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {path.string(), "wgmma_cells[0]", "m bucket"});
  write("{\"gpu\": \"X\", \"sm_count\": 1, \"cells\": [], \"wgmma_cells\": [{\"n\": 64, \"k\": 64, \"m\": 64, "
        "\"winner_splits\": 9, \"default_splits\": 1}]}");
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {"wgmma_cells[0]", "9 splits (1..8)"});
  write("{\"gpu\": \"X\"");
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {path.string(), "invalid JSON"});
  fs::remove(path);
  expect_error_containing([&] { gpu::GemvTuningTable::load(path); }, {"cannot open"});
}

// Every table shipped in tune/ loads, and each cell's winner is a tuning this build compiles for its
// kernel and can run at the cell's K and batch bucket (a renamed or dropped variant fails here, not at
// a user's first step).
TEST(GemvTuningTable, ShippedTablesNameCompiledTunings) {
  const fs::path shipped = fs::path(__FILE__).parent_path().parent_path() / "tune";
  int tables = 0;
  for (const fs::directory_entry& entry : fs::directory_iterator(shipped)) {
    if (entry.path().extension() != ".json") continue;
    ++tables;
    const gpu::GemvTuningTable table = gpu::GemvTuningTable::load(entry.path());
    EXPECT_FALSE(table.cells.empty()) << entry.path();
    for (const auto& [cell, result] : table.cells) {
      const bool nvfp4 = cell.kernel == gpu::GemvKernel::Nvfp4 || cell.kernel == gpu::GemvKernel::Nvfp4Swiglu;
      const bool paired = cell.kernel == gpu::GemvKernel::Nvfp4Swiglu || cell.kernel == gpu::GemvKernel::Bf16Swiglu;
      const std::vector<cuda::GemvTuning> compiled =
          nvfp4 ? (paired ? cuda::gemv_nvfp4_paired_tunings() : cuda::gemv_nvfp4_tunings())
                : (paired ? cuda::gemv_bf16_paired_tunings() : cuda::gemv_bf16_tunings());
      const std::string name = cuda::gemv_tuning_name(result.winner);
      const bool found = std::any_of(compiled.begin(), compiled.end(),
                                     [&](const cuda::GemvTuning& t) { return cuda::gemv_tuning_name(t) == name; });
      EXPECT_TRUE(found) << entry.path() << ": " << gpu::gemv_kernel_name(cell.kernel) << " " << cell.n << "x"
                         << cell.k << " M<=" << cell.m << ": " << name;
      if (nvfp4) EXPECT_TRUE(cuda::gemv_nvfp4_tuning_applies(result.winner, cell.m, cell.k)) << name;
    }
  }
  EXPECT_GT(tables, 0) << shipped;
}

}  // namespace
}  // namespace uberlm
#endif
