// The persistent Gated DeltaNet mixer (ops/cuda/fused/gated_delta_net_mixer.h) against the unfused launches it
// replaces, with the same tunings, over decode steps that continue from each path's own states: the residual
// stream, the normed rows, the four input projections, the delta rule's output and states, and the output
// projection. Its tasks run the unfused kernels' device functions, so every tensor is the same bits, except at 1..3
// sequences, where the unfused delta rule runs blocks of four threads a state column (the mixer two): there the
// delta rule's sums run in another order.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/nvfp4.h"
#include "gpu_test_util.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "ops/cuda/fused/gated_delta_net_mixer.h"
#include "ops/cuda/gemv.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// Delta rule sums over the key rows in another order (1..3 sequences): the fp32 state differs by a few ulps a
// step (the fused Gated DeltaNet test's bound for a different order over 60 steps is 1e-4); the bf16 output by at
// most one rounding (2^-8 relative to the largest value); the output projection of it likewise.
constexpr double kReorderedStateTolerance = 1e-4;
constexpr double kReorderedOutTolerance = 1.0 / 256;

const cuda::GemvTuning kInTuning{8, 4, 2, 4, cuda::GemvPipeline::AsyncCopy};
const cuda::GemvTuning kOutTuning{8, 4, 1, 8, cuda::GemvPipeline::AsyncCopy};

struct MixerShape {
  int64_t hidden;
  cuda::GatedDeltaNetDims dims;
};

std::vector<uint16_t> download_bf16(const DeviceBuffer& buffer) { return buffer.download<uint16_t>(); }

// One path's states and step buffers.
struct MixerPath {
  DeviceBuffer x, h, qkv, z, b, a, core_out, out, conv, recurrent, readers, counts;
};

class MixerCase {
 public:
  static constexpr int kSlots = 8;

  explicit MixerCase(const MixerShape& shape) : shape_(shape) {
    const cuda::GatedDeltaNetDims& d = shape.dims;
    std::mt19937& r = rng();
    const auto weight = [&](int64_t rows, int64_t cols) {
      std::normal_distribution<float> normal(0.0f, 0.05f);
      std::vector<float> values(rows * cols);
      for (float& v : values) v = normal(r);
      return upload_nvfp4(quantize_nvfp4(values.data(), rows, cols, "mixer_test"));
    };
    qkv_ = weight(d.conv_dim(), shape.hidden);
    z_ = weight(d.value_dim(), shape.hidden);
    b_ = weight(d.num_v_heads, shape.hidden);
    a_ = weight(d.num_v_heads, shape.hidden);
    out_ = weight(shape.hidden, d.value_dim());
    conv1d_ = upload(random_floats(d.conv_dim() * d.conv_kernel, 0.5f));
    a_log_ = upload(random_floats(d.num_v_heads));
    dt_bias_ = upload(random_floats(d.num_v_heads));
    norm_ = upload(random_floats(d.v_head_dim));
    input_norm_ = upload(random_floats(shape.hidden));
    const std::vector<float> x = random_floats(kSlots * shape.hidden);
    const std::vector<float> conv = random_floats(kSlots * d.conv_kernel * d.conv_dim());
    const std::vector<float> recurrent = random_floats(kSlots * d.num_v_heads * d.k_head_dim * d.v_head_dim, 0.1f);
    for (MixerPath* p : {&fused_, &unfused_}) {
      p->x = upload(x);
      p->h = upload(std::vector<uint16_t>(kSlots * shape.hidden, 0));  // its padding columns stay zero
      p->qkv = poisoned<float>(kSlots * d.conv_dim());
      p->z = poisoned<float>(kSlots * d.value_dim());
      p->b = poisoned<float>(kSlots * d.num_v_heads);
      p->a = poisoned<float>(kSlots * d.num_v_heads);
      p->core_out = poisoned<uint16_t>(kSlots * d.value_dim());
      p->out = poisoned<float>(kSlots * shape.hidden);
      p->conv = upload(conv);
      p->recurrent = upload(recurrent);
      p->readers = upload(std::vector<int32_t>(kSlots * d.num_k_heads, 0));
      p->counts = upload(std::vector<int32_t>(cuda::kGatedDeltaNetMixerCounts, 0));
    }
  }

  // Decode step `step` of sequences in slots 0..tokens-1 (each at position 5 + step), on a fresh random delta
  // (none at step 0), by both paths; `fused` queues the fused one (eagerly or into a graph).
  void step(int tokens, int step, const std::function<void(const std::function<void(cudaStream_t)>&)>& fused) {
    std::vector<int32_t> first(tokens), length(tokens, 1), slot(tokens), start(tokens, 5 + step);
    for (int t = 0; t < tokens; ++t) first[t] = slot[t] = t;
    chunk_first_ = upload(first);
    chunk_length_ = upload(length);
    chunk_slot_ = upload(slot);
    chunk_start_ = upload(start);
    delta_ = upload(random_floats(tokens * shape_.hidden));
    const float* delta = step == 0 ? nullptr : delta_.as<float>();
    fused([&](cudaStream_t stream) {
      CUDA_CHECK(cuda::launch_gated_delta_net_mixer(weights(), shape_.dims, state(fused_), chunks(tokens), shape_.hidden,
                                                    kInTuning, kOutTuning, buffers(fused_, delta), stream));
    });
    cuda::launch_gated_delta_net_mixer_unfused(weights(), shape_.dims, state(unfused_), chunks(tokens), shape_.hidden,
                                               kInTuning, kOutTuning, buffers(unfused_, delta), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  // One fused launch over `tokens` sequences with a task trace: every task's entry written, its wait within its
  // span, and the dependencies kept: no task of a phase ended its wait before the phase before had started its
  // last task.
  void expect_traced(int tokens) {
    const cuda::GatedDeltaNetMixerTasks tasks =
        cuda::gated_delta_net_mixer_tasks(weights(), shape_.dims, tokens, kInTuning, kOutTuning);
    DeviceBuffer trace = poisoned<uint64_t>(int64_t{tasks.total()} * cuda::kTaskTraceFields);
    cuda::GatedDeltaNetMixerBuffers b = buffers(fused_, nullptr);
    b.task_trace = trace.as<uint64_t>();
    std::vector<int32_t> first(tokens), length(tokens, 1), slot(tokens), start(tokens, 100);
    for (int t = 0; t < tokens; ++t) first[t] = slot[t] = t;
    chunk_first_ = upload(first);
    chunk_length_ = upload(length);
    chunk_slot_ = upload(slot);
    chunk_start_ = upload(start);
    CUDA_CHECK(cuda::launch_gated_delta_net_mixer(weights(), shape_.dims, state(fused_), chunks(tokens), shape_.hidden,
                                                  kInTuning, kOutTuning, b, nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint64_t> entries = trace.download<uint64_t>();
    int first_task = 0;
    uint64_t previous_last_start = 0;
    for (int phase = 0; phase < cuda::kGatedDeltaNetMixerPhases; ++phase) {
      uint64_t last_start = 0;
      for (int t = first_task; t < first_task + tasks.phase[phase]; ++t) {
        const uint64_t* e = &entries[static_cast<size_t>(t) * cuda::kTaskTraceFields];
        EXPECT_LT(e[0], 4096u) << "phase " << phase << " task " << t << ": block";
        EXPECT_LE(e[1], e[2]) << "phase " << phase << " task " << t;
        EXPECT_LE(e[2], e[3]) << "phase " << phase << " task " << t;
        EXPECT_GE(e[2], previous_last_start) << "phase " << phase << " task " << t << " ended its wait too soon";
        last_start = std::max(last_start, e[1]);
      }
      first_task += tasks.phase[phase];
      previous_last_start = last_start;
    }
  }

  // Every tensor both paths wrote; bit for bit where the delta rule runs the same blocks.
  void compare(int tokens, const std::string& label) const {
    const cuda::GatedDeltaNetDims& d = shape_.dims;
    EXPECT_EQ(fused_.counts.download<int32_t>(), std::vector<int32_t>(cuda::kGatedDeltaNetMixerCounts, 0))
        << label << ": the task counts are left zero";
    const auto bits = [&](const DeviceBuffer MixerPath::*member, int64_t width, const char* name) {
      const auto got = (fused_.*member).download<uint32_t>(), want = (unfused_.*member).download<uint32_t>();
      const size_t n = static_cast<size_t>(tokens * width);
      EXPECT_TRUE(std::equal(got.begin(), got.begin() + n, want.begin())) << label << ": " << name;
    };
    bits(&MixerPath::x, shape_.hidden, "x");
    bits(&MixerPath::h, shape_.hidden / 2, "h");
    bits(&MixerPath::qkv, d.conv_dim(), "qkv");
    bits(&MixerPath::z, d.value_dim(), "z");
    bits(&MixerPath::b, d.num_v_heads, "b");
    bits(&MixerPath::a, d.num_v_heads, "a");
    bits(&MixerPath::conv, d.conv_kernel * d.conv_dim(), "conv ring");
    const int64_t state = static_cast<int64_t>(d.num_v_heads) * d.k_head_dim * d.v_head_dim;
    if (tokens >= cuda::kManySequenceMinChunks) {
      bits(&MixerPath::core_out, d.value_dim() / 2, "core_out");
      bits(&MixerPath::out, shape_.hidden, "out");
      bits(&MixerPath::recurrent, state, "recurrent state");
      return;
    }
    const auto head = [](std::vector<float> v, int64_t n) {
      v.resize(n);
      return v;
    };
    expect_close(head(from_bf16(fused_.core_out.download<uint16_t>()), tokens * d.value_dim()),
                 head(from_bf16(unfused_.core_out.download<uint16_t>()), tokens * d.value_dim()),
                 kReorderedOutTolerance, label + ": core_out");
    expect_close(head(fused_.out.download<float>(), tokens * shape_.hidden),
                 head(unfused_.out.download<float>(), tokens * shape_.hidden), kReorderedOutTolerance,
                 label + ": out");
    expect_close(head(fused_.recurrent.download<float>(), tokens * state),
                 head(unfused_.recurrent.download<float>(), tokens * state), kReorderedStateTolerance,
                 label + ": recurrent state");
  }

 private:
  cuda::GatedDeltaNetMixerWeights weights() const {
    return {input_norm_.as<float>(), 1.0f, 1e-6f, qkv_.view(), z_.view(), b_.view(), a_.view(),
            cuda::GatedDeltaNetParams{conv1d_.as<float>(), a_log_.as<float>(), dt_bias_.as<float>(), norm_.as<float>(),
                                      1e-6f},
            out_.view()};
  }
  cuda::GatedDeltaNetState state(const MixerPath& p) const {
    return {p.conv.as<float>(), p.recurrent.as<float>(), p.readers.as<int32_t>()};
  }
  cuda::DeviceChunks chunks(int tokens) const {
    return {chunk_first_.as<int32_t>(), chunk_length_.as<int32_t>(), chunk_slot_.as<int32_t>(),
            chunk_start_.as<int32_t>(), tokens};
  }
  cuda::GatedDeltaNetMixerBuffers buffers(const MixerPath& p, const float* delta) const {
    return {p.x.as<float>(), delta,           p.h.data(),   p.qkv.as<float>(), p.z.as<float>(), p.b.as<float>(),
            p.a.as<float>(), p.core_out.data(), p.out.as<float>(), p.counts.as<int32_t>()};
  }

  MixerShape shape_;
  DeviceNvfp4 qkv_, z_, b_, a_, out_;
  DeviceBuffer conv1d_, a_log_, dt_bias_, norm_, input_norm_, delta_;
  DeviceBuffer chunk_first_, chunk_length_, chunk_slot_, chunk_start_;
  MixerPath fused_, unfused_;
};

// The 27B's layer (258 input-projection tasks, 48 heads a sequence, 320 output-projection tasks: more heads and
// output tasks at 8 sequences than the H200's 264 resident blocks), and a key head dim of 64 (the other delta rule
// instance).
const MixerShape kShapes[] = {{5120, {16, 48, 128, 128, 4}}, {512, {2, 4, 64, 128, 4}}};

TEST(GpuGatedDeltaNetMixer, MatchesTheUnfusedLaunchesStepByStep) {
  require_gpu();
  for (const MixerShape& shape : kShapes) {
    MixerCase c(shape);
    int step = 0;
    for (int tokens : {1, 3, 4, 8}) {
      ASSERT_EQ(cuda::gated_delta_net_mixer_unsupported(shape.dims, shape.hidden, tokens, kInTuning, kOutTuning), "");
      for (int repeat = 0; repeat < 3; ++repeat, ++step) {
        c.step(tokens, step, [](const auto& launch) { launch(nullptr); });
        c.compare(tokens, "hidden " + std::to_string(shape.hidden) + ", " + std::to_string(tokens) + " tokens, step " +
                              std::to_string(step));
      }
    }
  }
}

// As the decode step runs it: captured once into a CUDA graph and replayed, the counts set back to zero by each
// replay.
TEST(GpuGatedDeltaNetMixer, ReplaysFromACudaGraph) {
  require_gpu();
  MixerCase c(kShapes[1]);
  int step = 0;
  for (int tokens : {1, 8}) {
    for (int repeat = 0; repeat < 3; ++repeat, ++step) {
      c.step(tokens, step, [](const auto& launch) {
        cudaStream_t stream;
        CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        cudaGraph_t graph;
        CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        launch(stream);
        CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        cudaGraphExec_t exec;
        CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        CUDA_CHECK(cudaGraphLaunch(exec, stream));
        CUDA_CHECK(cudaStreamSynchronize(stream));
        CUDA_CHECK(cudaGraphExecDestroy(exec));
        CUDA_CHECK(cudaGraphDestroy(graph));
        CUDA_CHECK(cudaStreamDestroy(stream));
      });
      c.compare(tokens, std::to_string(tokens) + " tokens, graph step " + std::to_string(step));
    }
  }
}

TEST(GpuGatedDeltaNetMixer, TracesEveryTask) {
  require_gpu();
  MixerCase c(kShapes[1]);
  for (int tokens : {1, 8}) c.expect_traced(tokens);
}

TEST(GpuGatedDeltaNetMixer, NamesWhatItCannotRun) {
  const cuda::GatedDeltaNetDims dims{16, 32, 128, 128, 4};
  EXPECT_EQ(cuda::gated_delta_net_mixer_unsupported(dims, 2048, 9, kInTuning, kOutTuning), "a step of 1..8 sequences");
  EXPECT_EQ(cuda::gated_delta_net_mixer_unsupported({16, 32, 256, 128, 4}, 2048, 1, kInTuning, kOutTuning),
            "head dims up to 128");
  EXPECT_EQ(cuda::gated_delta_net_mixer_unsupported(dims, 2048, 1, cuda::GemvTuning{}, kOutTuning),
            "the input projections' tuning w8_d4_r2_k*_async");
}

}  // namespace
}  // namespace uberlm
