// kernel_bench's section for the fused decode phases (ops/cuda/fused/decode_phases.h) at the 27B's Gated DeltaNet
// layer shape: the mixer's four phases and the whole layer's seven, each as one fused launch (cooperative, and
// programmatic: started while the launch before drains) against the unfused launches they replace (same tunings),
// alone and back to back, at 1, 2, 4 and 8 sequences, on random weights rotated through enough copies that each
// launch reads them from DRAM; then one traced launch of the whole layer per count, summarised per phase (how long
// its tasks waited for the phase before, how long they worked, and the phase's span): where a launch leaves the
// memory pipe idle.
#include "kernel_bench_decode_phases.h"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/nvfp4.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/device_buffer.h"
#include "ops/cuda/fused/decode_phases.h"
#include "ops/cuda/kernel_timing.h"
#include "ops/cuda/random_fill.h"

namespace uberlm {

namespace {

constexpr int64_t kHidden = 5120, kIntermediate = 17408;
constexpr cuda::GatedDeltaNetDims kDims{16, 48, 128, 128, 4};
constexpr int kMaxTokens = 8;
constexpr int64_t kStateFloats = int64_t{48} * 128 * 128;

// The layer's NVFP4 weights: in_proj qkv, z, b, a; out_proj; gate, up, down.
constexpr int kWeights = 8;
constexpr int64_t kRows[kWeights] = {2 * 16 * 128 + 48 * 128, 48 * 128, 48, 48, kHidden, kIntermediate, kIntermediate,
                                     kHidden};
constexpr int64_t kCols[kWeights] = {kHidden, kHidden, kHidden, kHidden, 48 * 128, kHidden, kHidden, kIntermediate};

int64_t layer_weight_bytes(int first, int last) {
  int64_t bytes = 0;
  for (int i = first; i < last; ++i) bytes += kRows[i] * kCols[i] / 2 + kRows[i] * kCols[i] / 16;
  return bytes;
}

// Floats uniform in +-scale from a fixed seed, made on the GPU.
DeviceBuffer random_floats(int64_t count, float scale, uint32_t seed) {
  DeviceBuffer buffer(static_cast<size_t>(count) * sizeof(float));
  CUDA_CHECK(cuda::launch_fill_random_f32(buffer.as<float>(), count, seed, -scale, scale, nullptr));
  return buffer;
}

// One copy of the layer's weights: random codes and valid E4M3 scales.
struct LayerWeights {
  DeviceBuffer packed[kWeights], scales[kWeights];
  explicit LayerWeights(uint32_t seed) {
    for (int i = 0; i < kWeights; ++i) {
      std::vector<uint8_t> codes(kRows[i] * kCols[i] / 2), block_scales(kRows[i] * kCols[i] / 16);
      cuda::fill_pseudo_random(codes, seed + i);
      cuda::fill_pseudo_random(block_scales, seed + 7 * i + 1);
      cuda::make_e4m3_scales(block_scales);
      packed[i] = DeviceBuffer(codes);
      scales[i] = DeviceBuffer(block_scales);
    }
  }
  Nvfp4Weight view(int i) const {
    return {kRows[i], kCols[i], packed[i].as<uint8_t>(), scales[i].as<uint8_t>(), 1.0f / 4096, 0.0f,
            Nvfp4CodeOrder::GemvTiled};
  }
};

DeviceBuffer zeros(int64_t bytes) {
  DeviceBuffer buffer(static_cast<size_t>(bytes));
  buffer.fill_bytes(0);
  return buffer;
}

// The step buffers and states both paths write (the fused and unfused runs share them: only times are kept).
struct LayerBuffers {
  DeviceBuffer x = random_floats(kMaxTokens * kHidden, 1.0f, 6), delta = random_floats(kMaxTokens * kHidden, 0.1f, 7);
  DeviceBuffer h = zeros(kMaxTokens * kHidden * 2), mlp_in = zeros(kMaxTokens * kHidden * 2);
  DeviceBuffer qkv = zeros(kMaxTokens * kDims.conv_dim() * 4), z = zeros(kMaxTokens * 48 * 128 * 4),
               b = zeros(kMaxTokens * 48 * 4), a = zeros(kMaxTokens * 48 * 4), core_out = zeros(kMaxTokens * 48 * 128 * 2),
               sublayer_out = zeros(kMaxTokens * kHidden * 4), down_in = zeros(kMaxTokens * kIntermediate * 2);
  DeviceBuffer conv = random_floats(kMaxTokens * 4 * kDims.conv_dim(), 1.0f, 8);
  DeviceBuffer recurrent = random_floats(kMaxTokens * kStateFloats, 0.1f, 9);
  DeviceBuffer readers = zeros(kMaxTokens * 16 * 4), counts = zeros(cuda::kDecodePhaseCounts * 4);
};

struct LayerParams {
  DeviceBuffer input_norm = random_floats(kHidden, 1.0f, 1), post_norm = random_floats(kHidden, 1.0f, 10),
               conv1d = random_floats(kDims.conv_dim() * 4, 0.5f, 2), a_log = random_floats(48, 1.0f, 3),
               dt_bias = random_floats(48, 1.0f, 4), gated_norm = random_floats(128, 1.0f, 5);
};

// The mixer's phases, then (whole_layer) the MLP's, as the decoder builds them (runtime/cuda/decoder.cpp).
cuda::DecodePhases layer_phases(const LayerWeights& w, const LayerParams& params, LayerBuffers& b, bool whole_layer) {
  cuda::DecodePhases phases;
  phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {b.x.as<float>(), b.delta.as<float>(),
                                                        params.input_norm.as<float>(), 1.0f, 1e-6f, kHidden,
                                                        b.h.data(), kHidden, nullptr};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {{w.view(0), w.view(1), w.view(2), w.view(3)},
                                                      {b.qkv.data(), b.z.data(), b.b.data(), b.a.data()}, 4,
                                                      b.h.data(), 2, 4, nullptr, 0};
  phases.add(cuda::DecodePhaseKind::DeltaNetHeads).delta_net = {
      b.qkv.as<float>(), b.z.as<float>(), b.a.as<float>(), b.b.as<float>(),
      {params.conv1d.as<float>(), params.a_log.as<float>(), params.dt_bias.as<float>(), params.gated_norm.as<float>(),
       1e-6f},
      kDims, {b.conv.as<float>(), b.recurrent.as<float>(), b.readers.as<int32_t>()}, b.core_out.data(), 48 * 128};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {{w.view(4)}, {b.sublayer_out.data()}, 1, b.core_out.data(), 1, 8,
                                                      nullptr, 0};
  if (!whole_layer) return phases;
  phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {b.x.as<float>(), b.sublayer_out.as<float>(),
                                                        params.post_norm.as<float>(), 1.0f, 1e-6f, kHidden,
                                                        b.mlp_in.data(), kHidden, nullptr};
  phases.add(cuda::DecodePhaseKind::LinearSwiglu).linear = {{w.view(5), w.view(6)}, {}, 2, b.mlp_in.data(), 2, 4,
                                                            b.down_in.data(), kIntermediate};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {{w.view(7)}, {b.sublayer_out.data()}, 1, b.down_in.data(), 1, 8,
                                                      nullptr, 0};
  return phases;
}

nlohmann::json phase_summary(const std::vector<uint64_t>& trace, const cuda::DecodePhaseTasks& tasks) {
  nlohmann::json phases = nlohmann::json::array();
  uint64_t launch_start = ~uint64_t{0};
  for (int t = 0; t < tasks.total(); ++t) launch_start = std::min(launch_start, trace[t * cuda::kTaskTraceFields + 1]);
  int first = 0;
  for (int p = 0; p < tasks.count; ++p) {
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
    const double begin_us = (begin - launch_start) * 1e-3, end_us = (end - launch_start) * 1e-3;
    std::printf("    phase %d: %4d tasks from %7.2f to %7.2f us, mean wait %6.2f us, mean work %6.2f us\n", p,
                tasks.phase[p], begin_us, end_us, waited / n * 1e-3, worked / n * 1e-3);
    phases.push_back({{"phase", p}, {"tasks", tasks.phase[p]}, {"begin_us", begin_us}, {"end_us", end_us},
                      {"mean_wait_us", waited / n * 1e-3}, {"mean_work_us", worked / n * 1e-3}});
    first += tasks.phase[p];
  }
  return phases;
}

}  // namespace

nlohmann::json time_decode_phases(int iters, double copy_gbps, int64_t l2_bytes) {
  const int64_t layer_bytes = layer_weight_bytes(0, kWeights);
  const int copies = static_cast<int>(std::max<int64_t>(2, 4 * l2_bytes / layer_bytes + 1));
  std::vector<LayerWeights> weights;
  for (int c = 0; c < copies; ++c) weights.emplace_back(100 + 13 * c);
  const LayerParams params;
  LayerBuffers buffers;
  nlohmann::json rows = nlohmann::json::array();
  std::printf("\nfused decode phases, 27B Gated DeltaNet layer (%d weight copies): fused against the unfused launches\n",
              copies);
  for (int tokens : {1, 2, 4, 8}) {
    std::vector<int32_t> first(tokens), length(tokens, 1), slot(tokens), start(tokens, 100);
    for (int t = 0; t < tokens; ++t) first[t] = slot[t] = t;
    const DeviceBuffer d_first(first), d_length(length), d_slot(slot), d_start(start);
    const cuda::DeviceChunks chunks{d_first.as<int32_t>(), d_length.as<int32_t>(), d_slot.as<int32_t>(),
                                    d_start.as<int32_t>(), tokens};
    for (bool whole_layer : {false, true}) {
      const char* part = whole_layer ? "layer" : "mixer";
      // Bytes a launch must move: the weights, and each sequence's recurrent state read and written.
      const double bytes = static_cast<double>(layer_weight_bytes(0, whole_layer ? kWeights : 5)) +
                           2.0 * tokens * kStateFloats * 4;
      const auto fused = [&](cuda::DecodePhasesLaunch launch) {
        return std::function<void(int)>([&, launch](int i) {
          CUDA_CHECK(cuda::launch_decode_phases(layer_phases(weights[i % copies], params, buffers, whole_layer), chunks,
                                                buffers.counts.as<int32_t>(), nullptr, launch, nullptr));
        });
      };
      const std::pair<const char*, std::function<void(int)>> runs[] = {
          {"fused_cooperative", fused(cuda::DecodePhasesLaunch::Cooperative)},
          {"fused_programmatic", fused(cuda::DecodePhasesLaunch::Programmatic)},
          {"unfused", [&](int i) {
             cuda::launch_decode_phases_unfused(layer_phases(weights[i % copies], params, buffers, whole_layer), chunks,
                                                nullptr);
           }}};
      nlohmann::json row = {{"tokens", tokens}, {"phases", part}, {"bytes", bytes}};
      for (const auto& [name, launch] : runs) {
        const double alone_ms = cuda::time_median_ms(iters, launch);
        const double b2b_ms = cuda::time_back_to_back_ms(std::max(5, iters / 10), 10, launch);
        std::printf("  %s, %d tokens, %-18s alone %7.2f us (%5.1f%% of copy), back to back %7.2f us (%5.1f%%)\n", part,
                    tokens, name, alone_ms * 1e3, 100.0 * bytes / (alone_ms * 1e-3) / 1e9 / copy_gbps, b2b_ms * 1e3,
                    100.0 * bytes / (b2b_ms * 1e-3) / 1e9 / copy_gbps);
        row[std::string(name) + "_us"] = alone_ms * 1e3;
        row[std::string(name) + "_back_to_back_us"] = b2b_ms * 1e3;
      }
      if (whole_layer) {
        const cuda::DecodePhases traced = layer_phases(weights[1 % copies], params, buffers, true);
        const cuda::DecodePhaseTasks tasks = cuda::decode_phase_tasks(traced, tokens);
        DeviceBuffer trace(static_cast<size_t>(tasks.total()) * cuda::kTaskTraceFields * sizeof(uint64_t));
        CUDA_CHECK(cuda::launch_decode_phases(traced, chunks, buffers.counts.as<int32_t>(), trace.as<uint64_t>(),
                                              cuda::DecodePhasesLaunch::Cooperative, nullptr));
        CUDA_CHECK(cudaDeviceSynchronize());
        row["trace"] = phase_summary(trace.download<uint64_t>(), tasks);
      }
      rows.push_back(row);
    }
  }
  return rows;
}

}  // namespace uberlm
