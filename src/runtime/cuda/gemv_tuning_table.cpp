#include "runtime/cuda/gemv_tuning_table.h"

#include <cuda_runtime_api.h>

#include <cctype>
#include <cstdlib>
#include <ctime>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

namespace uberlm::gpu {

using json = nlohmann::json;

const char* gemv_kernel_name(GemvKernel kernel) {
  switch (kernel) {
    case GemvKernel::Nvfp4: return "gemv_nvfp4";
    case GemvKernel::Bf16: return "gemv_bf16";
    case GemvKernel::Nvfp4Swiglu: return "gemv_nvfp4_swiglu";
    case GemvKernel::Bf16Swiglu: return "gemv_bf16_swiglu";
  }
  return "unknown";
}

int gemv_m_bucket(int64_t m) {
  for (int bucket : kGemvMBuckets) {
    if (m <= bucket) return bucket;
  }
  fail("gemv_m_bucket: {} rows exceed the GEMV's {}", m, cuda::kGemvMaxM);
}

GpuIdentity GpuIdentity::current() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp props{};
  CUDA_CHECK(cudaGetDeviceProperties(&props, device));
  GpuIdentity id{props.name, props.multiProcessorCount, 0, 0};
  CUDA_CHECK(cudaRuntimeGetVersion(&id.cuda_runtime));
  CUDA_CHECK(cudaDriverGetVersion(&id.cuda_driver));
  return id;
}

std::optional<int> GemvTuningTable::find_wgmma_splits(int64_t n, int64_t k, int64_t m) const {
  const auto it = wgmma_cells.find(WgmmaCell{n, k, cuda::gemm_nvfp4_wgmma_tokens_bucket(m)});
  if (it == wgmma_cells.end()) return std::nullopt;
  return it->second.winner_splits;
}

std::optional<cuda::GemvTuning> GemvTuningTable::find(GemvKernel kernel, int64_t n, int64_t k, int64_t m) const {
  const auto it = cells.find(GemvCell{kernel, n, k, gemv_m_bucket(m)});
  if (it == cells.end()) return std::nullopt;
  return it->second.winner;
}

namespace {

GemvKernel kernel_from_name(const std::string& name, const std::string& where) {
  for (GemvKernel kernel : {GemvKernel::Nvfp4, GemvKernel::Bf16, GemvKernel::Nvfp4Swiglu, GemvKernel::Bf16Swiglu}) {
    if (name == gemv_kernel_name(kernel)) return kernel;
  }
  fail("{}: unknown kernel '{}'", where, name);
}

cuda::GemvTuning tuning_from_name(const json& value, const std::string& where) {
  if (!value.is_string()) fail("{}: expected a tuning name", where);
  const std::optional<cuda::GemvTuning> tuning = cuda::parse_gemv_tuning(value.get<std::string>());
  if (!tuning) fail("{}: '{}' is not a tuning name (e.g. w4_d2_r2_k4)", where, value.get<std::string>());
  return *tuning;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

}  // namespace

GemvTuningTable GemvTuningTable::load(const std::filesystem::path& path) {
  std::ifstream file(path);
  if (!file) fail("tuning table {}: cannot open", path.string());
  json root;
  try {
    root = json::parse(file);
  } catch (const json::exception& error) {
    fail("tuning table {}: invalid JSON: {}", path.string(), error.what());
  }
  const std::string source = "tuning table " + path.string();
  try {
    GemvTuningTable table;
    table.gpu = {root.at("gpu").get<std::string>(), root.at("sm_count").get<int>(), root.value("cuda_runtime", 0),
                 root.value("cuda_driver", 0)};
    table.date = root.value("date", "");
    table.command = root.value("command", "");
    table.copy_gbps = root.value("copy_gbps", 0.0);
    const json& cells = root.at("cells");
    for (size_t i = 0; i < cells.size(); ++i) {
      const json& cell = cells[i];
      const std::string where = source + " cells[" + std::to_string(i) + "]";
      const GemvCell key{kernel_from_name(cell.at("kernel").get<std::string>(), where), cell.at("n").get<int64_t>(),
                         cell.at("k").get<int64_t>(), cell.at("m").get<int>()};
      if (key.n <= 0 || key.k <= 0 || gemv_m_bucket(key.m) != key.m) fail("{}: bad n, k or m bucket", where);
      table.cells[key] = {tuning_from_name(cell.at("winner"), where + ".winner"), cell.value("winner_us", 0.0),
                          tuning_from_name(cell.at("default"), where + ".default"), cell.value("default_us", 0.0)};
    }
    const json wgmma_cells = root.value("wgmma_cells", json::array());
    for (size_t i = 0; i < wgmma_cells.size(); ++i) {
      const json& cell = wgmma_cells[i];
      const std::string where = source + " wgmma_cells[" + std::to_string(i) + "]";
      const WgmmaCell key{cell.at("n").get<int64_t>(), cell.at("k").get<int64_t>(), cell.at("m").get<int>()};
      if (key.n <= 0 || key.k <= 0 || key.m < 1 || key.m > cuda::kGemmWgmmaMaxM || cuda::gemm_nvfp4_wgmma_tokens_bucket(key.m) != key.m) {
        fail("{}: bad n, k or m bucket", where);
      }
      const WgmmaCellResult result{cell.at("winner_splits").get<int>(), cell.value("winner_us", 0.0),
                                   cell.at("default_splits").get<int>(), cell.value("default_us", 0.0)};
      for (int splits : {result.winner_splits, result.built_in_splits}) {
        if (splits < 1 || splits > cuda::kGemmWgmmaMaxSplits) {
          fail("{}: {} splits (1..{})", where, splits, cuda::kGemmWgmmaMaxSplits);
        }
      }
      table.wgmma_cells[key] = result;
    }
    return table;
  } catch (const json::exception& error) {
    fail("{}: {}", source, error.what());
  }
}

void GemvTuningTable::save(const std::filesystem::path& path) const {
  json cells_json = json::array();
  for (const auto& [cell, result] : cells) {
    cells_json.push_back({{"kernel", gemv_kernel_name(cell.kernel)}, {"n", cell.n}, {"k", cell.k}, {"m", cell.m},
                          {"winner", cuda::gemv_tuning_name(result.winner)}, {"winner_us", result.winner_us},
                          {"default", cuda::gemv_tuning_name(result.built_in)}, {"default_us", result.built_in_us}});
  }
  json wgmma_json = json::array();
  for (const auto& [cell, result] : wgmma_cells) {
    wgmma_json.push_back({{"n", cell.n}, {"k", cell.k}, {"m", cell.m}, {"winner_splits", result.winner_splits},
                          {"winner_us", result.winner_us}, {"default_splits", result.built_in_splits},
                          {"default_us", result.built_in_us}});
  }
  const json root = {{"gpu", gpu.name},         {"sm_count", gpu.sm_count}, {"cuda_runtime", gpu.cuda_runtime},
                     {"cuda_driver", gpu.cuda_driver}, {"date", date.empty() ? utc_now() : date},
                     {"command", command},      {"copy_gbps", copy_gbps},   {"cells", cells_json},
                     {"wgmma_cells", wgmma_json}};
  std::filesystem::create_directories(path.parent_path().empty() ? "." : path.parent_path());
  const std::filesystem::path temporary = path.string() + ".partial";
  {
    std::ofstream out(temporary);
    if (!(out << root.dump(2) << "\n")) fail("tuning table: cannot write {}", temporary.string());
  }
  std::filesystem::rename(temporary, path);
}

namespace {
std::string table_file_name(const GpuIdentity& gpu) {
  std::string file;
  for (char c : gpu.name) file += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '-';
  return file + ".json";
}
}  // namespace

std::optional<std::filesystem::path> find_tuning_table(const GpuIdentity& gpu) {
  for (const std::filesystem::path& path :
       {default_tuning_table_path(gpu), std::filesystem::path(UBERLM_SHIPPED_TUNE_DIR) / table_file_name(gpu)}) {
    if (std::filesystem::exists(path)) return path;
  }
  return std::nullopt;
}

std::filesystem::path default_tuning_table_path(const GpuIdentity& gpu) {
  std::filesystem::path base;
  if (const char* dir = std::getenv("UBERLM_CACHE_DIR")) base = dir;
  else if (const char* xdg = std::getenv("XDG_CACHE_HOME")) base = std::filesystem::path(xdg) / "uberlm";
  else if (const char* home = std::getenv("HOME")) base = std::filesystem::path(home) / ".cache" / "uberlm";
  else base = ".uberlm-cache";
  return base / "tuning" / table_file_name(gpu);
}

cuda::GemvTuning built_in_tuning(GemvKernel kernel, int64_t n, int64_t k, int64_t m) {
  switch (kernel) {
    case GemvKernel::Nvfp4: return cuda::gemv_nvfp4_default_tuning(m, n, k);
    case GemvKernel::Bf16: return cuda::gemv_bf16_default_tuning(m, n, k);
    case GemvKernel::Nvfp4Swiglu: return cuda::gemv_paired_tuning(cuda::gemv_nvfp4_default_tuning(m, 2 * n, k));
    case GemvKernel::Bf16Swiglu: return cuda::gemv_paired_tuning(cuda::gemv_bf16_default_tuning(m, 2 * n, k));
  }
  return {};
}

}  // namespace uberlm::gpu
