// kernel_bench: device-to-device copy bandwidth (the roofline) and the decode GEMV kernels on the
// Qwen3.5-27B linear shapes at M = 1, 8, 32, 64 (and the Hopper small-M GEMM at 128 too; bf16 weights over 8 rows
// also through cuBLAS, "gemm_bf16_cublas"), each shape with a read-only probe of its weight codes
// (read_probe.h: the ceiling of a kernel of that size; row M = 0). Each launch is timed alone (its own pair of CUDA
// events, median of many) and back to back (see LaunchTimes), rotating over enough weight copies that
// L2 cannot hold them; --l2-resident instead reads one copy every launch (held in L2 where it fits), for what
// a kernel gains from weights brought into L2 ahead.
// --sweep also times every compiled tuning (warps, pipeline depth, row tiles) of each kernel; --only
// keeps the runs whose label "shape/M/tuning" (e.g. "mlp_down/1/w4_d2_r2_k4") contains the text, for
// profiling one launch. The MLP's gate/up pair (2 x 17408 x 5120) with SwiGLU is timed both ways: fused
// into the GEMV epilogue ("mlp_gate_up_swiglu/M/fused_<tuning>") and as the two-target GEMV plus the
// SwiGLU kernel ("mlp_gate_up_swiglu/M/unfused"); both count the same bytes (weights, x, bf16 out).
// Prefill's NVFP4 linear layers at M = 128 and 2048 ("prefill_gemm/shape", gemm.h) are timed in three parts: the
// dequantisation into the bf16 scratch alone, the cuBLAS product alone, and both as the backend runs them,
// beside a bf16 product of 8192^3 for the matrix rate cuBLAS reaches on this GPU.
// The residual add + RMSNorm ("rms_norm/rows/kernel", rms_norm.h) at the 27B hidden size for 1, 2048 and 8192
// rows, in its two kernels: 16-byte quads (rows of 4k values, every model's) and scalar (forced by an odd output
// stride); bytes are x and delta read, x and the bf16 row written.
// The fused decode phases of a Gated DeltaNet layer against the launches they replace ("decode_phases",
// kernel_bench_decode_phases.cpp), with a traced launch's per-phase breakdown.
//   kernel_bench [--json PATH] [--iters N] [--sweep] [--only TEXT] [--l2-resident] [--commit HASH]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/nvfp4.h"
#include "ops/cuda/activation.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/dequantize_nvfp4.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/gemm.h"
#include "ops/cuda/gemm_nvfp4_wgmma.h"
#include "ops/cuda/gemv.h"
#include "ops/cuda/kernel_timing.h"
#include "ops/cuda/nvfp4_wgmma_layout.h"
#include "ops/cuda/random_fill.h"
#include "ops/cuda/read_probe.h"
#include "ops/cuda/rms_norm.h"
#include "kernel_bench_decode_phases.h"

namespace uberlm {
namespace {

enum class WeightFormat { Nvfp4, Bf16 };

struct BenchShape {
  std::string name;
  WeightFormat format;
  int64_t n, k;
};

const std::vector<BenchShape> kShapes = {
    {"attn_qkv_gate", WeightFormat::Nvfp4, 10240, 5120}, {"linear_attn_in", WeightFormat::Nvfp4, 6144, 5120},
    {"attn_out", WeightFormat::Nvfp4, 5120, 6144},      {"mlp_gate_up", WeightFormat::Nvfp4, 17408, 5120},
    {"mlp_down", WeightFormat::Nvfp4, 5120, 17408},      {"attn_qkv_gate_bf16", WeightFormat::Bf16, 10240, 5120},
    {"lm_head_bf16", WeightFormat::Bf16, 248320, 5120},
    // The 27B's gate and up projections together (2 x 17408 rows), as the model's grouped launch runs them.
    {"mlp_gate_up_pair", WeightFormat::Nvfp4, 34816, 5120},
};
constexpr int64_t kTokenCounts[] = {1, 8, 32, 64, 128};  // the GEMV's up to kGemvMaxM

// One launch timed two ways: alone, with events around each launch (the issue tables' method, which
// counts the launch latency and the ramp-up and drain of every kernel), and back to back, ten in a row
// between two events, as a decode step's graph runs them (dependent launches overlap the next
// kernel's prologue with this one's tail).
struct LaunchTimes {
  double alone_ms;
  double back_to_back_ms;
};

template <class Launch>
LaunchTimes time_launch(int iters, Launch launch) {
  return {cuda::time_median_ms(iters, launch), cuda::time_back_to_back_ms(std::max(5, iters / 10), 10, launch)};
}

struct ResultRow {
  std::string kernel, shape, tuning;
  int64_t n, k, m;
  bool default_tuning;
  double bytes;
  int weight_copies;
};

// Prints the row and appends it to `results`, with both timings as time and fraction of the copy bandwidth.
void report_row(const ResultRow& row, const LaunchTimes& times, double copy_gbps, int iters, bool sweep_row,
                nlohmann::json& results) {
  const double gbps = row.bytes / (times.alone_ms * 1e-3) / 1e9;
  const double gbps_back_to_back = row.bytes / (times.back_to_back_ms * 1e-3) / 1e9;
  std::printf("%-20s %7lld %6lld %3lld %-22s %10.2f %7.1f%% %10.2f %7.1f%%%s\n", row.shape.c_str(), (long long)row.n,
              (long long)row.k, (long long)row.m, row.tuning.c_str(), times.alone_ms * 1e3, 100.0 * gbps / copy_gbps,
              times.back_to_back_ms * 1e3, 100.0 * gbps_back_to_back / copy_gbps, sweep_row ? "  (sweep)" : "");
  results.push_back({{"kernel", row.kernel}, {"shape", row.shape}, {"n", row.n}, {"k", row.k}, {"m", row.m},
                     {"tuning", row.tuning}, {"default_tuning", row.default_tuning}, {"median_us", times.alone_ms * 1e3},
                     {"bytes", row.bytes}, {"gbps", gbps}, {"fraction_of_copy", gbps / copy_gbps},
                     {"back_to_back_us", times.back_to_back_ms * 1e3},
                     {"back_to_back_fraction_of_copy", gbps_back_to_back / copy_gbps},
                     {"weight_copies", row.weight_copies}, {"iters", iters}});
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

// Random bf16 values in a device buffer of `elements`.
DeviceBuffer random_bf16(int64_t elements, uint32_t seed) {
  std::vector<uint8_t> host(elements * 2);
  cuda::fill_pseudo_random(host, seed);
  cuda::make_bf16_values(host);
  return DeviceBuffer(host);
}

// gemm.h's NVFP4 product at prompt sizes, in parts (see the top of the file); TFLOP/s count 2 M N K.
nlohmann::json time_prefill_gemms(int iters) {
  constexpr int64_t kPromptRows[] = {128, 2048}, kSquare = 8192;
  const int gemm_iters = std::max(5, iters / 20);
  DeviceBuffer workspace(cuda::kGemmWorkspaceBytes);
  cuda::Gemm gemm(nullptr, workspace.data(), cuda::kGemmWorkspaceBytes);
  nlohmann::json rows = nlohmann::json::array();
  const auto tflops = [](int64_t m, int64_t n, int64_t k, double ms) { return 2.0 * m * n * k / (ms * 1e-3) / 1e12; };
  {
    DeviceBuffer a = random_bf16(kSquare * kSquare, 3), b = random_bf16(kSquare * kSquare, 5), c(kSquare * kSquare * 4);
    const double ms = cuda::time_median_ms(gemm_iters, [&](int) {
      gemm.bf16(a.data(), kSquare, kSquare, b.data(), kSquare, c.data(), DType::F32);
    });
    std::printf("\nprefill_gemm: bf16 %lld^3 through cuBLAS: %.3f ms, %.0f TFLOP/s\n", (long long)kSquare, ms,
                tflops(kSquare, kSquare, kSquare, ms));
    rows.push_back({{"shape", "bf16_square"}, {"m", kSquare}, {"n", kSquare}, {"k", kSquare}, {"cublas_ms", ms},
                    {"cublas_tflops", tflops(kSquare, kSquare, kSquare, ms)}});
  }
  std::printf("%-16s %7s %6s %5s %12s %12s %12s %10s %10s\n", "prefill_gemm", "N", "K", "M", "dequant_ms",
              "cublas_ms", "total_ms", "TFLOP/s", "dequant%");
  for (const BenchShape& shape : kShapes) {
    if (shape.format != WeightFormat::Nvfp4) continue;
    std::vector<uint8_t> host_packed(shape.n * shape.k / 2), host_scales(shape.n * shape.k / 16);
    cuda::fill_pseudo_random(host_packed, shape.n);
    cuda::fill_pseudo_random(host_scales, shape.k);
    cuda::make_e4m3_scales(host_scales);
    DeviceBuffer packed(host_packed), scales(host_scales), scratch(shape.n * shape.k * 2);
    const Nvfp4Weight w{shape.n, shape.k, packed.as<uint8_t>(), scales.as<uint8_t>(), 1.0f / 4096, 0.0f,
                        Nvfp4CodeOrder::GemvTiled};  // random codes: random in any order
    for (const int64_t m : kPromptRows) {
      DeviceBuffer x = random_bf16(m * shape.k, 7), y(m * shape.n * 4);
      const double dequant_ms = cuda::time_median_ms(gemm_iters, [&](int) {
        CUDA_CHECK(cuda::launch_dequantize_nvfp4_bf16(w, scratch.data(), nullptr));
      });
      const double cublas_ms = cuda::time_median_ms(gemm_iters, [&](int) {
        gemm.bf16(scratch.data(), shape.n, shape.k, x.data(), m, y.data(), DType::F32, w.global_scale);
      });
      const double total_ms = cuda::time_median_ms(gemm_iters, [&](int) {
        gemm.nvfp4(w, scratch.data(), shape.n * shape.k, x.data(), m, y.data(), DType::F32);
      });
      std::printf("%-16s %7lld %6lld %5lld %12.3f %12.3f %12.3f %10.0f %9.1f%%\n", shape.name.c_str(),
                  (long long)shape.n, (long long)shape.k, (long long)m, dequant_ms, cublas_ms, total_ms,
                  tflops(m, shape.n, shape.k, total_ms), 100.0 * dequant_ms / total_ms);
      rows.push_back({{"shape", shape.name}, {"m", m}, {"n", shape.n}, {"k", shape.k}, {"dequantize_ms", dequant_ms},
                      {"cublas_ms", cublas_ms}, {"total_ms", total_ms},
                      {"cublas_tflops", tflops(m, shape.n, shape.k, cublas_ms)},
                      {"total_tflops", tflops(m, shape.n, shape.k, total_ms)}});
    }
  }
  return rows;
}

nlohmann::json time_rms_norms(int iters, double copy_gbps) {
  constexpr int64_t kDim = 5120;
  nlohmann::json rows = nlohmann::json::array();
  std::printf("\n%-8s %6s %8s %10s %9s %9s\n", "rms_norm", "rows", "kernel", "us", "GB/s", "of copy");
  for (const int64_t count : {int64_t{1}, int64_t{2048}, int64_t{8192}}) {
    DeviceBuffer x(count * kDim * 4), delta(count * kDim * 4), weight(kDim * 4), out(count * (kDim + 1) * 2);
    CUDA_CHECK(cuda::launch_fill_random_f32(x.as<float>(), count * kDim, 1, -1.0f, 1.0f, nullptr));
    CUDA_CHECK(cuda::launch_fill_random_f32(delta.as<float>(), count * kDim, 2, -1e-3f, 1e-3f, nullptr));
    CUDA_CHECK(cuda::launch_fill_random_f32(weight.as<float>(), kDim, 3, -1.0f, 1.0f, nullptr));
    for (const int64_t out_stride : {kDim, kDim + 1}) {
      const char* kernel = out_stride % 4 == 0 ? "quads" : "scalar";
      const double ms = cuda::time_median_ms(iters, [&](int) {
        CUDA_CHECK(cuda::launch_add_rms_norm(x.as<float>(), delta.as<float>(), nullptr, count, kDim,
                                             weight.as<float>(), 1.0f, 1e-6f, out.data(), out_stride, nullptr));
      });
      const double gbps = count * kDim * 14.0 / (ms * 1e-3) / 1e9;
      std::printf("%-8s %6lld %8s %10.2f %9.0f %8.1f%%\n", "", (long long)count, kernel, ms * 1e3, gbps,
                  100 * gbps / copy_gbps);
      rows.push_back({{"rows", count}, {"dim", kDim}, {"kernel", kernel}, {"us", ms * 1e3}, {"gbps", gbps},
                      {"copy_fraction", gbps / copy_gbps}});
    }
  }
  return rows;
}

int run(int argc, char** argv) {
  std::string json_path, commit = "unknown", command, only;
  int iters = 200;
  bool sweep = false, l2_resident = false;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (arg == "--iters" && i + 1 < argc) iters = std::max(1, std::atoi(argv[++i]));
    else if (arg == "--commit" && i + 1 < argc) commit = argv[++i];
    else if (arg == "--sweep") sweep = true;
    else if (arg == "--only" && i + 1 < argc) only = argv[++i];
    else if (arg == "--l2-resident") l2_resident = true;
    else fail("kernel_bench: unknown argument {} (usage: kernel_bench [--json PATH] [--iters N] [--sweep] [--only TEXT] [--l2-resident] [--commit HASH])", arg);
  }

  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  nlohmann::json report;
  report["device"] = prop.name;
  report["commit"] = commit;
  report["date"] = utc_now();
  report["command"] = command;
  report["sm_count"] = prop.multiProcessorCount;
  report["l2_bytes"] = prop.l2CacheSize;
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);

  // Roofline: a 1 GiB device-to-device copy, bytes read + bytes written.
  const size_t copy_bytes = size_t{1} << 30;
  double copy_gbps = 0;
  {
    DeviceBuffer src(copy_bytes), dst(copy_bytes);
    src.fill_bytes(0x5a);
    const double ms = cuda::time_median_ms(std::max(5, iters / 10), [&](int) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, nullptr));
    });
    copy_gbps = 2.0 * copy_bytes / (ms * 1e-3) / 1e9;
  }
  report["copy_gbps"] = copy_gbps;
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copy_gbps);
  std::printf("%-20s %7s %6s %3s %-22s %10s %8s %10s %8s\n", "kernel", "N", "K", "M", "tuning", "alone_us", "of_copy",
              "b2b_us", "of_copy");

  nlohmann::json results = nlohmann::json::array();
  DeviceBuffer gemm_workspace(cuda::kGemmWorkspaceBytes);
  cuda::Gemm gemm(nullptr, gemm_workspace.data(), cuda::kGemmWorkspaceBytes);
  for (const BenchShape& shape : kShapes) {
    const bool nvfp4 = shape.format == WeightFormat::Nvfp4;
    const size_t packed_bytes = nvfp4 ? shape.n * shape.k / 2 : shape.n * shape.k * 2;
    const size_t scale_bytes = nvfp4 ? shape.n * shape.k / 16 : 0;
    const size_t weight_bytes = packed_bytes + scale_bytes;
    // Enough copies that their total is at least 4x L2, so each launch reads its weights from DRAM.
    const int copies =
        l2_resident ? 1 : static_cast<int>(std::max<size_t>(2, (4 * size_t(prop.l2CacheSize)) / weight_bytes + 1));

    std::vector<uint8_t> host_packed(packed_bytes), host_scales(scale_bytes);
    cuda::fill_pseudo_random(host_packed, shape.n);
    if (!nvfp4) cuda::make_bf16_values(host_packed);
    cuda::fill_pseudo_random(host_scales, shape.k);
    cuda::make_e4m3_scales(host_scales);
    std::vector<DeviceBuffer> packed, scales, wgmma_tiles;
    for (int c = 0; c < copies; ++c) {
      packed.emplace_back(host_packed);
      if (nvfp4) scales.emplace_back(host_scales);
    }
    // The small-M GEMM's fragment tiles (nvfp4_wgmma_layout.h; 11% more bytes than codes and E4M3 scales, its
    // scales being bf16, but its rows count the checkpoint's bytes like the GEMV's so that of_copy compares
    // times): random bytes that are all valid E4M3 codes (as bf16 scales, finite values).
    if (nvfp4 && cuda::gemm_nvfp4_wgmma_device_runs()) {
      std::vector<uint8_t> host_tiles(cuda::nvfp4_wgmma_layout_bytes(shape.n, shape.k));
      cuda::fill_pseudo_random(host_tiles, shape.n + shape.k);
      cuda::make_e4m3_scales(host_tiles);
      for (int c = 0; c < copies; ++c) wgmma_tiles.emplace_back(host_tiles);
    }
    host_packed = {};

    // What a kernel that only reads this shape's weight codes reaches, alone and back to back.
    if (std::string("read_probe").find(only) != std::string::npos || shape.name.find(only) != std::string::npos) {
      DeviceBuffer sink(sizeof(uint32_t));
      const LaunchTimes times = time_launch(iters, [&](int i) {
        CUDA_CHECK(cuda::launch_read_probe(packed[i % copies].data(), packed_bytes, sink.as<uint32_t>(), nullptr));
      });
      report_row({"read_probe", shape.name, "read_probe", shape.n, shape.k, 0, false, double(packed_bytes), copies},
                 times, copy_gbps, iters, false, results);
    }

    for (int64_t m : kTokenCounts) {
      std::vector<uint8_t> host_x(m * shape.k * 2);
      cuda::fill_pseudo_random(host_x, m + 17);
      cuda::make_bf16_values(host_x);
      DeviceBuffer x(host_x), y(m * shape.n * 2);
      const bool gemv_runs = m <= cuda::kGemvMaxM;
      const cuda::GemvTuning chosen = !gemv_runs ? cuda::GemvTuning{}
                                      : nvfp4    ? cuda::gemv_nvfp4_default_tuning(m, shape.n, shape.k)
                                                 : cuda::gemv_bf16_default_tuning(m, shape.n, shape.k);
      std::vector<cuda::GemvTuning> tunings;
      if (gemv_runs) tunings.push_back(chosen);
      if (gemv_runs && sweep) {
        for (const cuda::GemvTuning& t : nvfp4 ? cuda::gemv_nvfp4_tunings() : cuda::gemv_bf16_tunings()) {
          if (nvfp4 && !cuda::gemv_nvfp4_tuning_applies(t, m, shape.k)) continue;
          if (cuda::gemv_tuning_name(t) != cuda::gemv_tuning_name(chosen)) tunings.push_back(t);
        }
      }
      for (const cuda::GemvTuning& tuning : tunings) {
        const std::string label = shape.name + "/" + std::to_string(m) + "/" + cuda::gemv_tuning_name(tuning);
        if (label.find(only) == std::string::npos) continue;
        const LaunchTimes times = time_launch(iters, [&](int i) {
          const int c = i % copies;
          if (nvfp4) {
            const Nvfp4Weight w{shape.n, shape.k, packed[c].as<uint8_t>(), scales[c].as<uint8_t>(), 1.0f / 4096, 0.0f,
                                Nvfp4CodeOrder::GemvTiled};  // random codes: random in any order
            cuda::gemv_nvfp4_tuned(w, x.data(), m, y.data(), DType::BF16, tuning, nullptr);
          } else {
            cuda::gemv_bf16_tuned(packed[c].data(), shape.n, shape.k, x.data(), m, y.data(), DType::BF16, tuning,
                                  nullptr);
          }
        });
        const bool is_default = &tuning == &tunings.front();
        report_row({nvfp4 ? "gemv_nvfp4" : "gemv_bf16", shape.name, cuda::gemv_tuning_name(tuning), shape.n, shape.k, m,
                    is_default, double(weight_bytes) + double(m * shape.k * 2) + double(m * shape.n * 2), copies},
                   times, copy_gbps, iters, !is_default, results);
      }
      // bf16 weights at more than 8 rows: cuBLAS beside the GEMV (the lm_head of a decode step of many sequences).
      if (!nvfp4 && m > 8 && (shape.name + "/" + std::to_string(m) + "/cublas").find(only) != std::string::npos) {
        const LaunchTimes times = time_launch(iters, [&](int i) {
          gemm.bf16(packed[i % copies].data(), shape.n, shape.k, x.data(), m, y.data(), DType::BF16);
        });
        report_row({"gemm_bf16_cublas", shape.name, "cublas", shape.n, shape.k, m, false,
                    double(weight_bytes) + double(m * shape.k * 2) + double(m * shape.n * 2), copies},
                   times, copy_gbps, iters, false, results);
      }
      // The Hopper small-M GEMM (gemm_nvfp4_wgmma.h) beside the GEMV: its default K split, and with --sweep every
      // other split count.
      if (nvfp4 && cuda::gemm_nvfp4_wgmma_device_runs()) {
        const int64_t tile_count = cuda::gemm_nvfp4_wgmma_row_tiles(shape.n);
        const int default_splits = cuda::gemm_nvfp4_wgmma_splits(tile_count, shape.k);
        std::vector<int> split_counts = {default_splits};
        if (sweep) {
          for (int splits = 1; splits <= cuda::kGemmWgmmaMaxSplits; ++splits) {
            if (splits != default_splits) split_counts.push_back(splits);
          }
        }
        DeviceBuffer arrivals(tile_count * sizeof(int));
        arrivals.fill_bytes(0);
        for (int splits : split_counts) {
          const std::string tuning = "wgmma_split" + std::to_string(splits);
          if ((shape.name + "/" + std::to_string(m) + "/" + tuning).find(only) == std::string::npos) continue;
          const int64_t floats = cuda::gemm_nvfp4_wgmma_partial_floats(tile_count, m, splits);
          DeviceBuffer partials(floats * sizeof(float));
          const cuda::GemmWgmmaWorkspace workspace{partials.as<float>(), floats, arrivals.as<int>(), tile_count};
          const LaunchTimes times = time_launch(iters, [&](int i) {
            const cuda::Nvfp4WgmmaTarget target{{shape.n, shape.k, wgmma_tiles[i % copies].as<uint8_t>(), 1.0f / 4096},
                                                y.data()};
            cuda::gemm_nvfp4_wgmma(&target, 1, x.data(), m, DType::BF16, splits, workspace, nullptr);
          });
          report_row({"gemm_nvfp4_wgmma", shape.name, tuning, shape.n, shape.k, m, false,
                      double(weight_bytes) + double(m * shape.k * 2) + double(m * shape.n * 2), copies},
                     times, copy_gbps, iters, splits != default_splits, results);
        }
      }
    }
  }
  // The 27B's gate/up pair (each [17408, 5120]) with SwiGLU: fused (default paired tuning, and every paired tuning
  // with --sweep) against the unfused launches the backend ran before. (Before session 32 this pair was 2 x 8704.)
  {
    const int64_t n = 17408, k = 5120, pair_bytes = 2 * (n * k / 2 + n * k / 16);
    const int copies = static_cast<int>(std::max<int64_t>(2, (4 * int64_t{prop.l2CacheSize}) / pair_bytes + 1));
    std::vector<uint8_t> host_packed(n * k / 2), host_scales(n * k / 16);
    cuda::fill_pseudo_random(host_packed, n);
    cuda::fill_pseudo_random(host_scales, k);
    cuda::make_e4m3_scales(host_scales);
    std::vector<DeviceBuffer> packed, scales;  // gate of copy c at 2c, up at 2c + 1
    for (int c = 0; c < 2 * copies; ++c) {
      packed.emplace_back(host_packed);
      scales.emplace_back(host_scales);
    }
    const auto weight = [&](int i) {
      return Nvfp4Weight{n, k, packed[i].as<uint8_t>(), scales[i].as<uint8_t>(), 1.0f / 4096, 0.0f,
                         Nvfp4CodeOrder::GemvTiled};  // random codes: random in any order
    };
    for (int64_t m : kTokenCounts) {
      if (m > cuda::kGemvMaxM) continue;
      std::vector<uint8_t> host_x(m * k * 2);
      cuda::fill_pseudo_random(host_x, m + 17);
      cuda::make_bf16_values(host_x);
      DeviceBuffer x(host_x), gate(m * n * 4), up(m * n * 4), out(m * n * 2);
      const cuda::GemvTuning chosen = cuda::gemv_paired_tuning(cuda::gemv_nvfp4_default_tuning(m, 2 * n, k));
      std::vector<std::pair<std::string, std::optional<cuda::GemvTuning>>> runs = {
          {"unfused", std::nullopt}, {"fused_" + cuda::gemv_tuning_name(chosen), chosen}};
      if (sweep) {
        for (const cuda::GemvTuning& t : cuda::gemv_nvfp4_paired_tunings()) {
          if (!cuda::gemv_nvfp4_tuning_applies(t, m, k)) continue;
          if (cuda::gemv_tuning_name(t) != cuda::gemv_tuning_name(chosen)) runs.push_back({"fused_" + cuda::gemv_tuning_name(t), t});
        }
      }
      for (const auto& [name, tuning] : runs) {
        const std::string label = "mlp_gate_up_swiglu/" + std::to_string(m) + "/" + name;
        if (label.find(only) == std::string::npos) continue;
        const LaunchTimes times = time_launch(iters, [&](int i) {
          const int c = i % copies;
          if (tuning) {
            cuda::gemv_nvfp4_swiglu_tuned(weight(2 * c), weight(2 * c + 1), x.data(), m, out.data(), n, *tuning,
                                          nullptr);
          } else {
            const cuda::Nvfp4GemvTarget targets[] = {{weight(2 * c), gate.data()}, {weight(2 * c + 1), up.data()}};
            cuda::gemv_nvfp4_multi(targets, 2, x.data(), m, DType::F32, nullptr);
            CUDA_CHECK(cuda::launch_swiglu(gate.data(), up.data(), DType::F32, m, n, out.data(), n, nullptr));
          }
        });
        const bool is_default = !tuning || cuda::gemv_tuning_name(*tuning) == cuda::gemv_tuning_name(chosen);
        report_row({tuning ? "gemv_nvfp4_swiglu" : "gemv_nvfp4_multi+swiglu", "mlp_gate_up_swiglu", name, 2 * n, k, m,
                    is_default, double(pair_bytes) + double(m * k * 2) + double(m * n * 2), copies},
                   times, copy_gbps, iters, !is_default, results);
      }
    }
  }
  if (std::string("prefill_gemm").find(only) != std::string::npos) report["prefill_gemm"] = time_prefill_gemms(iters);
  if (std::string("rms_norm").find(only) != std::string::npos) report["rms_norm"] = time_rms_norms(iters, copy_gbps);
  if (std::string("decode_phases").find(only) != std::string::npos) {
    report["decode_phases"] = time_decode_phases(iters, copy_gbps, prop.l2CacheSize);
  }
  report["results"] = results;
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << report.dump(2) << "\n";
    if (!out) fail("kernel_bench: cannot write {}", json_path);
  }
  return 0;
}

}  // namespace
}  // namespace uberlm

int main(int argc, char** argv) {
  try {
    return uberlm::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: %s\n", e.what());
    return 1;
  }
}
