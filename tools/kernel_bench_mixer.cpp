// kernel_bench's section for the fused Gated DeltaNet mixer (ops/cuda/fused/gated_delta_net_mixer.h) at the 27B's
// layer shape: the fused launch against the unfused launches it replaces (same tunings), alone and back to back,
// at 1, 2, 4 and 8 sequences, on random weights rotated through enough copies that each launch reads them from
// DRAM; then one traced launch per count, summarised per phase (how long its tasks waited for the phase before,
// how long they worked, and the phase's span), which is where a launch leaves the memory pipe idle.
#include "kernel_bench_mixer.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/nvfp4.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/fused/gated_delta_net_mixer.h"
#include "ops/cuda/kernel_timing.h"
#include "ops/cuda/random_fill.h"

namespace uberlm {

namespace {

constexpr int64_t kHidden = 5120;
constexpr cuda::GatedDeltaNetDims kDims{16, 48, 128, 128, 4};
constexpr int kMaxTokens = 8;
const cuda::GemvTuning kInTuning{8, 4, 2, 4, cuda::GemvPipeline::AsyncCopy};
const cuda::GemvTuning kOutTuning{8, 4, 1, 8, cuda::GemvPipeline::AsyncCopy};

// Floats in +-scale from a fixed seed.
DeviceBuffer random_floats(int64_t count, float scale, uint32_t seed) {
  std::vector<float> values(count);
  uint32_t state = seed * 2654435761u + 1;
  for (float& v : values) {
    state = state * 1664525u + 1013904223u;
    v = scale * (static_cast<float>(state >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f);
  }
  return DeviceBuffer(values);
}

// One copy of a layer's NVFP4 projections: random codes and valid E4M3 scales.
struct MixerWeightsCopy {
  DeviceBuffer packed[5], scales[5];
  Nvfp4Weight view(int i, int64_t rows, int64_t cols) const {
    return {rows, cols, packed[i].as<uint8_t>(), scales[i].as<uint8_t>(), 1.0f / 4096, 0.0f, Nvfp4CodeOrder::GemvTiled};
  }
};

constexpr int64_t kRows[5] = {2 * 16 * 128 + 48 * 128, 48 * 128, 48, 48, kHidden};  // qkv, z, b, a, out
constexpr int64_t kCols[5] = {kHidden, kHidden, kHidden, kHidden, 48 * 128};

MixerWeightsCopy make_copy(uint32_t seed) {
  MixerWeightsCopy copy;
  for (int i = 0; i < 5; ++i) {
    std::vector<uint8_t> packed(kRows[i] * kCols[i] / 2), scales(kRows[i] * kCols[i] / 16);
    cuda::fill_pseudo_random(packed, seed + i);
    cuda::fill_pseudo_random(scales, seed + 7 * i + 1);
    cuda::make_e4m3_scales(scales);
    copy.packed[i] = DeviceBuffer(packed);
    copy.scales[i] = DeviceBuffer(scales);
  }
  return copy;
}

nlohmann::json phase_summary(const std::vector<uint64_t>& trace, const cuda::GatedDeltaNetMixerTasks& tasks) {
  static const char* kNames[cuda::kGatedDeltaNetMixerPhases] = {"norm", "in_proj", "heads", "out_proj"};
  nlohmann::json phases = nlohmann::json::array();
  uint64_t launch_start = ~uint64_t{0};
  for (int t = 0; t < tasks.total(); ++t) launch_start = std::min(launch_start, trace[t * cuda::kTaskTraceFields + 1]);
  int first = 0;
  for (int p = 0; p < cuda::kGatedDeltaNetMixerPhases; ++p) {
    uint64_t begin = ~uint64_t{0}, end = 0;
    double waited = 0, worked = 0;
    for (int t = first; t < first + tasks.phase[p]; ++t) {
      const uint64_t* e = &trace[t * cuda::kTaskTraceFields];
      begin = std::min(begin, e[1]);
      end = std::max(end, e[3]);
      waited += static_cast<double>(e[2] - e[1]);
      worked += static_cast<double>(e[3] - e[2]);
    }
    const int n = std::max(1, tasks.phase[p]);
    std::printf("    %-9s %4d tasks: from %7.2f to %7.2f us, mean wait %6.2f us, mean work %6.2f us\n", kNames[p],
                tasks.phase[p], (begin - launch_start) * 1e-3, (end - launch_start) * 1e-3, waited / n * 1e-3,
                worked / n * 1e-3);
    phases.push_back({{"phase", kNames[p]}, {"tasks", tasks.phase[p]}, {"begin_us", (begin - launch_start) * 1e-3},
                      {"end_us", (end - launch_start) * 1e-3}, {"mean_wait_us", waited / n * 1e-3},
                      {"mean_work_us", worked / n * 1e-3}});
    first += tasks.phase[p];
  }
  return phases;
}

}  // namespace

nlohmann::json time_gated_delta_net_mixer(int iters, double copy_gbps, int64_t l2_bytes) {
  int64_t weight_bytes = 0;
  for (int i = 0; i < 5; ++i) weight_bytes += kRows[i] * kCols[i] / 2 + kRows[i] * kCols[i] / 16;
  const int copies = static_cast<int>(std::max<int64_t>(2, 4 * l2_bytes / weight_bytes + 1));
  std::vector<MixerWeightsCopy> weights;
  for (int c = 0; c < copies; ++c) weights.push_back(make_copy(100 + 13 * c));
  const DeviceBuffer input_norm = random_floats(kHidden, 1.0f, 1), conv1d = random_floats(kDims.conv_dim() * 4, 0.5f, 2),
                     a_log = random_floats(48, 1.0f, 3), dt_bias = random_floats(48, 1.0f, 4),
                     norm = random_floats(128, 1.0f, 5);
  const auto layer = [&](int c) {
    const MixerWeightsCopy& w = weights[c % copies];
    return cuda::GatedDeltaNetMixerWeights{
        input_norm.as<float>(), 1.0f, 1e-6f, w.view(0, kRows[0], kCols[0]), w.view(1, kRows[1], kCols[1]),
        w.view(2, kRows[2], kCols[2]), w.view(3, kRows[3], kCols[3]),
        cuda::GatedDeltaNetParams{conv1d.as<float>(), a_log.as<float>(), dt_bias.as<float>(), norm.as<float>(), 1e-6f},
        w.view(4, kRows[4], kCols[4])};
  };
  const int64_t state_floats = int64_t{48} * 128 * 128;
  DeviceBuffer x = random_floats(kMaxTokens * kHidden, 1.0f, 6), delta = random_floats(kMaxTokens * kHidden, 0.1f, 7),
               h(kMaxTokens * kHidden * 2), qkv(kMaxTokens * kDims.conv_dim() * 4), z(kMaxTokens * 48 * 128 * 4),
               b(kMaxTokens * 48 * 4), a(kMaxTokens * 48 * 4), core_out(kMaxTokens * 48 * 128 * 2),
               out(kMaxTokens * kHidden * 4), conv = random_floats(kMaxTokens * 4 * kDims.conv_dim(), 1.0f, 8),
               recurrent = random_floats(kMaxTokens * state_floats, 0.1f, 9),
               readers(kMaxTokens * 16 * sizeof(int32_t)), counts(cuda::kGatedDeltaNetMixerCounts * sizeof(int32_t));
  readers.fill_bytes(0);
  counts.fill_bytes(0);
  const cuda::GatedDeltaNetState state{conv.as<float>(), recurrent.as<float>(), readers.as<int32_t>()};
  const cuda::GatedDeltaNetMixerBuffers buffers{x.as<float>(), delta.as<float>(), h.data(),
                                                qkv.as<float>(), z.as<float>(), b.as<float>(),
                                                a.as<float>(), core_out.data(), out.as<float>(),
                                                counts.as<int32_t>()};
  nlohmann::json rows = nlohmann::json::array();
  std::printf("\nGated DeltaNet mixer, 27B layer (%d weight copies): fused against the unfused launches\n", copies);
  for (int tokens : {1, 2, 4, 8}) {
    std::vector<int32_t> first(tokens), length(tokens, 1), slot(tokens), start(tokens, 100);
    for (int t = 0; t < tokens; ++t) first[t] = slot[t] = t;
    const DeviceBuffer d_first(first), d_length(length), d_slot(slot), d_start(start);
    const cuda::DeviceChunks chunks{d_first.as<int32_t>(), d_length.as<int32_t>(), d_slot.as<int32_t>(),
                                    d_start.as<int32_t>(), tokens};
    const auto fused = [&](int i) {
      CUDA_CHECK(cuda::launch_gated_delta_net_mixer(layer(i), kDims, state, chunks, kHidden, kInTuning, kOutTuning,
                                                    buffers, nullptr));
    };
    const auto unfused = [&](int i) {
      cuda::launch_gated_delta_net_mixer_unfused(layer(i), kDims, state, chunks, kHidden, kInTuning, kOutTuning,
                                                 buffers, nullptr);
    };
    // Bytes a launch must move: the weights, and each sequence's recurrent state read and written.
    const double bytes = static_cast<double>(weight_bytes) + 2.0 * tokens * state_floats * 4;
    nlohmann::json row = {{"tokens", tokens}, {"bytes", bytes}};
    for (const auto& [name, launch] : {std::pair<const char*, std::function<void(int)>>{"fused", fused},
                                       std::pair<const char*, std::function<void(int)>>{"unfused", unfused}}) {
      const double alone_ms = cuda::time_median_ms(iters, launch);
      const double b2b_ms = cuda::time_back_to_back_ms(std::max(5, iters / 10), 10, launch);
      std::printf("  %d tokens %-8s alone %7.2f us (%5.1f%% of copy), back to back %7.2f us (%5.1f%%)\n", tokens, name,
                  alone_ms * 1e3, 100.0 * bytes / (alone_ms * 1e-3) / 1e9 / copy_gbps, b2b_ms * 1e3,
                  100.0 * bytes / (b2b_ms * 1e-3) / 1e9 / copy_gbps);
      row[std::string(name) + "_us"] = alone_ms * 1e3;
      row[std::string(name) + "_back_to_back_us"] = b2b_ms * 1e3;
    }
    const cuda::GatedDeltaNetMixerTasks tasks =
        cuda::gated_delta_net_mixer_tasks(layer(0), kDims, tokens, kInTuning, kOutTuning);
    DeviceBuffer trace(static_cast<size_t>(tasks.total()) * cuda::kTaskTraceFields * sizeof(uint64_t));
    cuda::GatedDeltaNetMixerBuffers traced = buffers;
    traced.task_trace = trace.as<uint64_t>();
    CUDA_CHECK(cuda::launch_gated_delta_net_mixer(layer(1), kDims, state, chunks, kHidden, kInTuning, kOutTuning, traced,
                                                  nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    row["phases"] = phase_summary(trace.download<uint64_t>(), tasks);
    rows.push_back(row);
  }
  return rows;
}

}  // namespace uberlm
