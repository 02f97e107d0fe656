// kernel_bench: device-to-device copy bandwidth (the roofline) and the decode GEMV kernels on the
// Qwen3.5-27B linear shapes at M = 1, 8, 32, 64. Each launch is timed with its own pair of CUDA events;
// the median of many is reported, rotating over enough weight copies that L2 cannot hold them.
// --sweep also times every compiled tuning (warps, pipeline depth, row tiles) of each kernel; --only
// keeps the runs whose label "shape/M/tuning" (e.g. "mlp_down/1/w4_d2_r2_k4") contains the text, for
// profiling one launch. The MLP's gate/up pair (2 x 8704 x 5120) with SwiGLU is timed both ways: fused
// into the GEMV epilogue ("mlp_gate_up_swiglu/M/fused_<tuning>") and as the two-target GEMV plus the
// SwiGLU kernel ("mlp_gate_up_swiglu/M/unfused"); both count the same bytes (weights, x, bf16 out).
//   kernel_bench [--json PATH] [--iters N] [--sweep] [--only TEXT] [--commit HASH]
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
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/gemv.h"

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
};
constexpr int64_t kTokenCounts[] = {1, 8, 32, 64};

// Deterministic pseudo-random bytes (xorshift64*), fast enough for gigabytes.
void fill_random(std::vector<uint8_t>& out, uint64_t seed) {
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < out.size(); i += 8) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    const uint64_t value = state * 0x2545F4914F6CDD1Dull;
    std::memcpy(out.data() + i, &value, std::min<size_t>(8, out.size() - i));
  }
}

// bf16 values in [-1, 1) (random sign, exponent 0x70..0x7e, random mantissa): never zero, never NaN.
void make_bf16_values(std::vector<uint8_t>& bytes) {
  for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
    const uint16_t bits = static_cast<uint16_t>(bytes[i] | (bytes[i + 1] << 8));
    const uint16_t exponent = 0x70 + (bits >> 7) % 15;
    const uint16_t value = static_cast<uint16_t>((bits & 0x8000) | (exponent << 7) | (bits & 0x7f));
    bytes[i] = value & 0xff;
    bytes[i + 1] = value >> 8;
  }
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Median milliseconds of `launch(i)` over `iters` launches after a warm-up.
template <class Launch>
double time_median_ms(int iters, Launch launch) {
  for (int i = 0; i < 10; ++i) launch(i);
  std::vector<cudaEvent_t> events(2 * iters);
  for (auto& e : events) CUDA_CHECK(cudaEventCreate(&e));
  for (int i = 0; i < iters; ++i) {
    CUDA_CHECK(cudaEventRecord(events[2 * i], nullptr));
    launch(i);
    CUDA_CHECK(cudaEventRecord(events[2 * i + 1], nullptr));
  }
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> ms(iters);
  for (int i = 0; i < iters; ++i) {
    float elapsed = 0;
    CUDA_CHECK(cudaEventElapsedTime(&elapsed, events[2 * i], events[2 * i + 1]));
    ms[i] = elapsed;
  }
  for (auto& e : events) CUDA_CHECK(cudaEventDestroy(e));
  return median(ms);
}

std::string tuning_name(const cuda::GemvTuning& t) {
  return "w" + std::to_string(t.warps) + "_d" + std::to_string(t.depth) + "_r" + std::to_string(t.row_tiles) +
         "_k" + std::to_string(t.k_split) + (t.async_copy ? "_async" : "");
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

int run(int argc, char** argv) {
  std::string json_path, commit = "unknown", command, only;
  int iters = 200;
  bool sweep = false;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (arg == "--iters" && i + 1 < argc) iters = std::max(1, std::atoi(argv[++i]));
    else if (arg == "--commit" && i + 1 < argc) commit = argv[++i];
    else if (arg == "--sweep") sweep = true;
    else if (arg == "--only" && i + 1 < argc) only = argv[++i];
    else fail("kernel_bench: unknown argument {} (usage: kernel_bench [--json PATH] [--iters N] [--sweep] [--only TEXT] [--commit HASH])", arg);
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
    const double ms = time_median_ms(std::max(5, iters / 10), [&](int) {
      CUDA_CHECK(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice, nullptr));
    });
    copy_gbps = 2.0 * copy_bytes / (ms * 1e-3) / 1e9;
  }
  report["copy_gbps"] = copy_gbps;
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n\n", copy_gbps);
  std::printf("%-20s %7s %6s %3s %-16s %10s %9s %8s\n", "kernel", "N", "K", "M", "tuning", "median_us", "GB/s",
              "of_copy");

  nlohmann::json results = nlohmann::json::array();
  for (const BenchShape& shape : kShapes) {
    const bool nvfp4 = shape.format == WeightFormat::Nvfp4;
    const size_t packed_bytes = nvfp4 ? shape.n * shape.k / 2 : shape.n * shape.k * 2;
    const size_t scale_bytes = nvfp4 ? shape.n * shape.k / 16 : 0;
    const size_t weight_bytes = packed_bytes + scale_bytes;
    // Enough copies that their total is at least 4x L2, so each launch reads its weights from DRAM.
    const int copies = static_cast<int>(std::max<size_t>(2, (4 * size_t(prop.l2CacheSize)) / weight_bytes + 1));

    std::vector<uint8_t> host_packed(packed_bytes), host_scales(scale_bytes);
    fill_random(host_packed, shape.n);
    if (!nvfp4) make_bf16_values(host_packed);
    fill_random(host_scales, shape.k);
    for (auto& s : host_scales) s = static_cast<uint8_t>(0x30 + s % 0x18);  // E4M3 0.125 .. 14: finite
    std::vector<DeviceBuffer> packed, scales;
    for (int c = 0; c < copies; ++c) {
      packed.emplace_back(host_packed);
      if (nvfp4) scales.emplace_back(host_scales);
    }
    host_packed = {};

    for (int64_t m : kTokenCounts) {
      std::vector<uint8_t> host_x(m * shape.k * 2);
      fill_random(host_x, m + 17);
      make_bf16_values(host_x);
      DeviceBuffer x(host_x), y(m * shape.n * 2);
      const cuda::GemvTuning chosen = nvfp4 ? cuda::gemv_nvfp4_default_tuning(m, shape.n, shape.k)
                                            : cuda::gemv_bf16_default_tuning(m, shape.n, shape.k);
      std::vector<cuda::GemvTuning> tunings = {chosen};
      if (sweep) {
        for (const cuda::GemvTuning& t : nvfp4 ? cuda::gemv_nvfp4_tunings() : cuda::gemv_bf16_tunings()) {
          if (tuning_name(t) != tuning_name(chosen)) tunings.push_back(t);
        }
      }
      for (const cuda::GemvTuning& tuning : tunings) {
        const std::string label = shape.name + "/" + std::to_string(m) + "/" + tuning_name(tuning);
        if (label.find(only) == std::string::npos) continue;
        const double ms = time_median_ms(iters, [&](int i) {
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
        const double bytes = double(weight_bytes) + double(m * shape.k * 2) + double(m * shape.n * 2);
        const double gbps = bytes / (ms * 1e-3) / 1e9;
        const bool is_default = &tuning == &tunings.front();
        std::printf("%-20s %7lld %6lld %3lld %-16s %10.2f %9.0f %7.1f%%%s\n", shape.name.c_str(),
                    (long long)shape.n, (long long)shape.k, (long long)m, tuning_name(tuning).c_str(), ms * 1e3, gbps,
                    100.0 * gbps / copy_gbps, is_default ? "" : "  (sweep)");
        results.push_back({{"kernel", nvfp4 ? "gemv_nvfp4" : "gemv_bf16"}, {"shape", shape.name}, {"n", shape.n},
                           {"k", shape.k}, {"m", m}, {"tuning", tuning_name(tuning)}, {"default_tuning", is_default},
                           {"median_us", ms * 1e3}, {"bytes", bytes}, {"gbps", gbps},
                           {"fraction_of_copy", gbps / copy_gbps}, {"weight_copies", copies}, {"iters", iters}});
      }
    }
  }
  // The gate/up pair with SwiGLU: fused (default paired tuning, and every paired tuning with --sweep)
  // against the unfused launches the backend ran before.
  {
    const int64_t n = 8704, k = 5120, pair_bytes = 2 * (n * k / 2 + n * k / 16);
    const int copies = static_cast<int>(std::max<int64_t>(2, (4 * int64_t{prop.l2CacheSize}) / pair_bytes + 1));
    std::vector<uint8_t> host_packed(n * k / 2), host_scales(n * k / 16);
    fill_random(host_packed, n);
    fill_random(host_scales, k);
    for (auto& s : host_scales) s = static_cast<uint8_t>(0x30 + s % 0x18);  // E4M3 0.125 .. 14: finite
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
      std::vector<uint8_t> host_x(m * k * 2);
      fill_random(host_x, m + 17);
      make_bf16_values(host_x);
      DeviceBuffer x(host_x), gate(m * n * 4), up(m * n * 4), out(m * n * 2);
      const cuda::GemvTuning chosen = cuda::gemv_paired_tuning(cuda::gemv_nvfp4_default_tuning(m, 2 * n, k));
      std::vector<std::pair<std::string, std::optional<cuda::GemvTuning>>> runs = {
          {"unfused", std::nullopt}, {"fused_" + tuning_name(chosen), chosen}};
      if (sweep) {
        for (const cuda::GemvTuning& t : cuda::gemv_nvfp4_paired_tunings()) {
          if (tuning_name(t) != tuning_name(chosen)) runs.push_back({"fused_" + tuning_name(t), t});
        }
      }
      for (const auto& [name, tuning] : runs) {
        const std::string label = "mlp_gate_up_swiglu/" + std::to_string(m) + "/" + name;
        if (label.find(only) == std::string::npos) continue;
        const double ms = time_median_ms(iters, [&](int i) {
          const int c = i % copies;
          if (tuning) {
            cuda::gemv_nvfp4_swiglu_tuned(weight(2 * c), weight(2 * c + 1), x.data(), m, out.data(), n, *tuning,
                                          nullptr);
          } else {
            const cuda::Nvfp4GemvTarget targets[] = {{weight(2 * c), gate.data()}, {weight(2 * c + 1), up.data()}};
            cuda::gemv_nvfp4_multi(targets, 2, x.data(), m, DType::F32, nullptr);
            CUDA_CHECK(cuda::launch_swiglu(gate.as<float>(), up.as<float>(), m, n, out.data(), n, nullptr));
          }
        });
        const double bytes = double(pair_bytes) + double(m * k * 2) + double(m * n * 2);
        const double gbps = bytes / (ms * 1e-3) / 1e9;
        std::printf("%-20s %7lld %6lld %3lld %-16s %10.2f %9.0f %7.1f%%\n", "mlp_gate_up_swiglu", (long long)(2 * n),
                    (long long)k, (long long)m, name.c_str(), ms * 1e3, gbps, 100.0 * gbps / copy_gbps);
        results.push_back({{"kernel", tuning ? "gemv_nvfp4_swiglu" : "gemv_nvfp4_multi+swiglu"},
                           {"shape", "mlp_gate_up_swiglu"}, {"n", 2 * n}, {"k", k}, {"m", m},
                           {"tuning", tuning ? tuning_name(*tuning) : "default"},
                           {"default_tuning", !tuning || tuning_name(*tuning) == tuning_name(chosen)},
                           {"median_us", ms * 1e3}, {"bytes", bytes}, {"gbps", gbps},
                           {"fraction_of_copy", gbps / copy_gbps}, {"weight_copies", copies}, {"iters", iters}});
      }
    }
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
