// The fused decode phases (ops/cuda/fused/decode_phases.h) against the unfused launches they replace, with the
// same tunings, over decode steps that continue from each path's own states: a Gated DeltaNet layer's mixer (norm,
// input projections, delta rule, output projection), the MLP half (norm, gate/up with SwiGLU, down) and the whole
// layer in one launch; every tensor written compared, the snapshots of the residual stream too. The phases run the
// unfused kernels' device functions, so every tensor is the same bits, except at 1..3 sequences, where the unfused
// delta rule runs blocks of four threads a state column (the fused two): there what follows the delta rule is
// compared within its reordering bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/nvfp4.h"
#include "gpu_test_util.h"
#include "ops/cuda/fused/decode_phases.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"
#include "runtime/backend.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// Delta rule sums over the key rows in another order (1..3 sequences): the fp32 state differs by a few ulps a
// step (the fused Gated DeltaNet test's bound for a different order over 60 steps is 1e-4); its bf16 output by at
// most one rounding (2^-8 relative to the largest value), and what is computed from it likewise.
constexpr double kReorderedStateTolerance = 1e-4;
constexpr double kReorderedTolerance = 1.0 / 256;

struct LayerShape {
  int64_t hidden, intermediate;
  cuda::GatedDeltaNetDims dims;
};

// Which phases a step runs: the mixer's or the MLP half's in one launch, the whole layer in one, or the mixer's and
// then the MLP half's in two launches back to back on one stream (the decoder's pattern from layer to layer: the
// counts set back to zero by one launch are the next one's).
enum class Phases { Mixer, Mlp, Layer, MixerThenMlp };

DeviceNvfp4 random_weight(int64_t rows, int64_t cols) {
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> values(rows * cols);
  for (float& v : values) v = normal(rng());
  return upload_nvfp4(quantize_nvfp4(values.data(), rows, cols, "decode_phases_test"));
}

// Step metadata of a decode step of `tokens` sequences in slots 0..tokens-1, sequence t at position + t * spread.
struct DecodeChunks {
  DeviceBuffer first, length, slot, start;
  DecodeChunks(int tokens, int position, int spread = 0) {
    std::vector<int32_t> firsts(tokens), lengths(tokens, 1), slots(tokens), starts(tokens);
    for (int t = 0; t < tokens; ++t) {
      firsts[t] = slots[t] = t;
      starts[t] = position + t * spread;
    }
    first = upload(firsts);
    length = upload(lengths);
    slot = upload(slots);
    start = upload(starts);
  }
  cuda::DeviceChunks view(int tokens) const {
    return {first.as<int32_t>(), length.as<int32_t>(), slot.as<int32_t>(), start.as<int32_t>(), tokens};
  }
};

// Queues the fused launch: eagerly, or into a CUDA graph replayed once.
using LaunchQueue = std::function<void(const std::function<void(cudaStream_t)>&)>;

// The first `count` elements of a device buffer, as T.
template <typename T>
std::vector<T> head(const DeviceBuffer& buffer, int64_t count) {
  std::vector<T> values = buffer.download<T>();
  values.resize(count);
  return values;
}

// One path's states and step buffers, as the decoder's StepBuffers hold them.
struct Path {
  DeviceBuffer x, h, mlp_in, qkv, z, b, a, core_out, sublayer_out, down_in, conv, recurrent, readers, counts;
  DeviceBuffer snapshots;  // [2, slots, hidden]: after the first norm's add, after the second's
};

class LayerCase {
 public:
  static constexpr int kSlots = 8;

  LayerCase(const LayerShape& shape, cuda::DecodePhasesLaunch launch) : shape_(shape), launch_(launch) {
    const cuda::GatedDeltaNetDims& d = shape.dims;
    const int64_t hidden = shape.hidden, inter = shape.intermediate;
    qkv_ = random_weight(d.conv_dim(), hidden);
    z_ = random_weight(d.value_dim(), hidden);
    b_ = random_weight(d.num_v_heads, hidden);
    a_ = random_weight(d.num_v_heads, hidden);
    out_ = random_weight(hidden, d.value_dim());
    gate_ = random_weight(inter, hidden);
    up_ = random_weight(inter, hidden);
    down_ = random_weight(hidden, inter);
    conv1d_ = upload(random_floats(d.conv_dim() * d.conv_kernel, 0.5f));
    a_log_ = upload(random_floats(d.num_v_heads));
    dt_bias_ = upload(random_floats(d.num_v_heads));
    gated_norm_ = upload(random_floats(d.v_head_dim));
    input_norm_ = upload(random_floats(hidden));
    post_norm_ = upload(random_floats(hidden));
    const std::vector<float> x = random_floats(kSlots * hidden);
    const std::vector<float> conv = random_floats(kSlots * d.conv_kernel * d.conv_dim());
    const std::vector<float> recurrent = random_floats(kSlots * state_floats(), 0.1f);
    for (Path* p : {&fused_, &unfused_}) {
      p->x = upload(x);
      p->h = upload(std::vector<uint16_t>(kSlots * hidden, 0));
      p->mlp_in = upload(std::vector<uint16_t>(kSlots * hidden, 0));
      p->qkv = poisoned<float>(kSlots * d.conv_dim());
      p->z = poisoned<float>(kSlots * d.value_dim());
      p->b = poisoned<float>(kSlots * d.num_v_heads);
      p->a = poisoned<float>(kSlots * d.num_v_heads);
      p->core_out = poisoned<uint16_t>(kSlots * d.value_dim());
      p->sublayer_out = upload(random_floats(kSlots * hidden, 0.1f));  // the MLP half's input when it runs alone
      p->down_in = poisoned<uint16_t>(kSlots * inter);
      p->conv = upload(conv);
      p->recurrent = upload(recurrent);
      p->readers = upload(std::vector<int32_t>(kSlots * d.num_k_heads, 0));
      p->counts = upload(std::vector<int32_t>(cuda::kDecodePhaseCounts, 0));
      p->snapshots = poisoned<float>(2 * kSlots * hidden);
    }
  }

  // Decode step `step` of sequences in slots 0..tokens-1 (each at position 5 + step), on a fresh random delta
  // for the first norm (none at step 0), by both paths from the fused path's states and residual stream (the
  // unfused path's differ after a reordered delta rule); `fused` queues the fused launch (eagerly or in a graph).
  void step(Phases which, int tokens, int step, const LaunchQueue& fused) {
    for (DeviceBuffer Path::*member : {&Path::x, &Path::sublayer_out, &Path::conv, &Path::recurrent}) {
      CUDA_CHECK(cudaMemcpy((unfused_.*member).data(), (fused_.*member).data(), (fused_.*member).bytes(),
                            cudaMemcpyDeviceToDevice));
    }
    chunks_ = DecodeChunks(tokens, 5 + step);
    delta_ = upload(random_floats(tokens * shape_.hidden));
    const float* delta = step == 0 ? nullptr : delta_.as<float>();
    const std::vector<Phases> launches =
        which == Phases::MixerThenMlp ? std::vector<Phases>{Phases::Mixer, Phases::Mlp} : std::vector<Phases>{which};
    fused([&](cudaStream_t stream) {
      for (Phases part : launches) {
        CUDA_CHECK(cuda::launch_decode_phases(phases(part, fused_, delta), chunks_.view(tokens),
                                              fused_.counts.as<int32_t>(), nullptr, launch_, stream));
      }
    });
    for (Phases part : launches) {
      cuda::launch_decode_phases_unfused(phases(part, unfused_, delta), chunks_.view(tokens), nullptr);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  // Every tensor the phases wrote, bit for bit; what follows a delta rule of 1..3 sequences within its bound.
  void compare(Phases launched, int tokens, const std::string& label) const {
    const Phases which = launched == Phases::MixerThenMlp ? Phases::Layer : launched;
    const cuda::GatedDeltaNetDims& d = shape_.dims;
    EXPECT_EQ(fused_.counts.download<int32_t>(), std::vector<int32_t>(cuda::kDecodePhaseCounts, 0))
        << label << ": the task counts are left zero";
    const bool reordered = which != Phases::Mlp && tokens < cuda::kManySequenceMinChunks;
    const int64_t hidden = shape_.hidden;
    const auto bits = [&](DeviceBuffer Path::*member, int64_t width, const char* name) {
      const auto got = (fused_.*member).download<uint32_t>(), want = (unfused_.*member).download<uint32_t>();
      EXPECT_TRUE(std::equal(got.begin(), got.begin() + tokens * width, want.begin())) << label << ": " << name;
    };
    const auto close = [&](DeviceBuffer Path::*member, int64_t width, bool bf16, double tolerance, const char* name) {
      const auto values = [&](const Path& p) {
        std::vector<float> v = bf16 ? from_bf16((p.*member).download<uint16_t>()) : (p.*member).download<float>();
        v.resize(tokens * width);
        return v;
      };
      expect_close(values(fused_), values(unfused_), tolerance, label + ": " + name);
    };
    // A tensor written after the delta rule: equal bits, or within the reordering bound.
    const auto after_delta_rule = [&](DeviceBuffer Path::*member, int64_t width, bool bf16, const char* name) {
      if (reordered) close(member, width, bf16, kReorderedTolerance, name);
      else bits(member, bf16 ? width / 2 : width, name);
    };
    if (which != Phases::Mlp) {
      bits(&Path::h, hidden / 2, "h");
      bits(&Path::qkv, d.conv_dim(), "qkv");
      bits(&Path::z, d.value_dim(), "z");
      bits(&Path::b, d.num_v_heads, "b");
      bits(&Path::a, d.num_v_heads, "a");
      bits(&Path::conv, d.conv_kernel * d.conv_dim(), "conv ring");
      after_delta_rule(&Path::core_out, d.value_dim(), true, "core_out");
      if (reordered) close(&Path::recurrent, state_floats(), false, kReorderedStateTolerance, "recurrent state");
      else bits(&Path::recurrent, state_floats(), "recurrent state");
    }
    if (which == Phases::Mixer) bits(&Path::x, hidden, "x");
    else after_delta_rule(&Path::x, hidden, false, "x");
    after_delta_rule(&Path::sublayer_out, hidden, false, "sublayer_out");
    if (which != Phases::Mixer) {
      after_delta_rule(&Path::mlp_in, hidden, true, "mlp_in");
      after_delta_rule(&Path::down_in, shape_.intermediate, true, "down_in");
    }
    const auto snapshot = [&](const Path& p, int which_norm) {
      std::vector<float> all = p.snapshots.download<float>();
      const auto begin = all.begin() + which_norm * kSlots * hidden;
      return std::vector<float>(begin, begin + tokens * hidden);
    };
    if (which != Phases::Mlp) EXPECT_EQ(snapshot(fused_, 0), snapshot(unfused_, 0)) << label << ": first snapshot";
    if (which != Phases::Mixer) {
      if (reordered) {
        expect_close(snapshot(fused_, 1), snapshot(unfused_, 1), kReorderedTolerance, label + ": second snapshot");
      } else {
        EXPECT_EQ(snapshot(fused_, 1), snapshot(unfused_, 1)) << label << ": second snapshot";
      }
    }
  }

  // One fused launch of the whole layer over `tokens` sequences with a task trace: every task's entry written,
  // its wait within its span, and no task of a phase past its wait before every task of the phase before ended.
  void expect_traced(int tokens) {
    chunks_ = DecodeChunks(tokens, 100);
    const cuda::DecodePhases layer = phases(Phases::Layer, fused_, nullptr);
    const cuda::DecodePhaseTasks tasks = cuda::decode_phase_tasks(layer, tokens);
    DeviceBuffer trace = poisoned<uint64_t>(int64_t{tasks.total()} * cuda::kTaskTraceFields);
    CUDA_CHECK(cuda::launch_decode_phases(layer, chunks_.view(tokens), fused_.counts.as<int32_t>(), trace.as<uint64_t>(),
                                          launch_, nullptr));
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint64_t> entries = trace.download<uint64_t>();
    int first = 0;
    uint64_t previous_last_end = 0;
    for (int p = 0; p < tasks.count; ++p) {
      uint64_t last_end = 0;
      for (int t = first; t < first + tasks.phase[p]; ++t) {
        const uint64_t* e = &entries[static_cast<size_t>(t) * cuda::kTaskTraceFields];
        const std::string where = "phase " + std::to_string(p) + " task " + std::to_string(t);
        EXPECT_LT(e[0], 4096u) << where << ": block";
        EXPECT_LE(e[1], e[2]) << where;
        EXPECT_LE(e[2], e[3]) << where;
        // A task's end is stamped before it counts itself done, so no wait of the next phase ends before it.
        if (p > 0) EXPECT_GE(e[2], previous_last_end) << where << " ended its wait before the phase before ended";
        last_end = std::max(last_end, e[3]);
      }
      first += tasks.phase[p];
      previous_last_end = last_end;
    }
  }

  cuda::DecodePhases fused_phases(Phases which) const { return phases(which, fused_, nullptr); }

  // The layer's phases with the input projections' activations read by the MLP's gate/up too.
  cuda::DecodePhases phases_sharing_activations() const {
    cuda::DecodePhases layer = phases(Phases::Layer, fused_, nullptr);
    for (int p = 0; p < layer.count; ++p) {
      if (layer.phase[p].kind == cuda::DecodePhaseKind::LinearSwiglu) layer.phase[p].linear.x = fused_.h.data();
    }
    return layer;
  }

  // `which` phases of path p, the first norm adding `delta`.
  cuda::DecodePhases phases(Phases which, const Path& p, const float* delta) const {
    const cuda::GatedDeltaNetDims& d = shape_.dims;
    const int64_t hidden = shape_.hidden;
    cuda::DecodePhases phases;
    if (which != Phases::Mlp) {
      cuda::NormPhase& norm = phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm;
      norm = {p.x.as<float>(), delta, input_norm_.as<float>(), 1.0f, 1e-6f, hidden, p.h.data(), hidden,
              p.snapshots.as<float>()};
      cuda::LinearPhase& in = phases.add(cuda::DecodePhaseKind::Linear).linear;
      in = {{qkv_.view(), z_.view(), b_.view(), a_.view()}, {p.qkv.data(), p.z.data(), p.b.data(), p.a.data()}, 4,
            p.h.data(), 2, 4, nullptr, 0};
      cuda::DeltaNetPhase& heads = phases.add(cuda::DecodePhaseKind::DeltaNetHeads).delta_net;
      heads = {p.qkv.as<float>(), p.z.as<float>(), p.a.as<float>(), p.b.as<float>(),
               {conv1d_.as<float>(), a_log_.as<float>(), dt_bias_.as<float>(), gated_norm_.as<float>(), 1e-6f},
               d, {p.conv.as<float>(), p.recurrent.as<float>(), p.readers.as<int32_t>()}, p.core_out.data(),
               d.value_dim()};
      cuda::LinearPhase& out = phases.add(cuda::DecodePhaseKind::Linear).linear;
      out = {{out_.view()}, {p.sublayer_out.data()}, 1, p.core_out.data(), 1, 8, nullptr, 0};
    }
    if (which != Phases::Mixer) {
      cuda::NormPhase& norm = phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm;
      norm = {p.x.as<float>(), p.sublayer_out.as<float>(), post_norm_.as<float>(), 1.0f, 1e-6f, hidden,
              p.mlp_in.data(), hidden, p.snapshots.as<float>() + kSlots * hidden};
      cuda::LinearPhase& gate_up = phases.add(cuda::DecodePhaseKind::LinearSwiglu).linear;
      gate_up = {{gate_.view(), up_.view()}, {}, 2, p.mlp_in.data(), 2, 4, p.down_in.data(), shape_.intermediate};
      cuda::LinearPhase& down = phases.add(cuda::DecodePhaseKind::Linear).linear;
      down = {{down_.view()}, {p.sublayer_out.data()}, 1, p.down_in.data(), 1, 8, nullptr, 0};
    }
    return phases;
  }

 private:
  int64_t state_floats() const {
    return static_cast<int64_t>(shape_.dims.num_v_heads) * shape_.dims.k_head_dim * shape_.dims.v_head_dim;
  }
  LayerShape shape_;
  cuda::DecodePhasesLaunch launch_;
  DeviceNvfp4 qkv_, z_, b_, a_, out_, gate_, up_, down_;
  DeviceBuffer conv1d_, a_log_, dt_bias_, gated_norm_, input_norm_, post_norm_, delta_;
  DecodeChunks chunks_{1, 0};
  Path fused_, unfused_;
};

// A gated attention layer (Qwen3.5's: the output gate after each head's query in q_proj, q/k norms, partial RoPE)
// with its MLP, over a paged KV cache whose earlier positions are random: both paths' every tensor, the KV pools
// included, bit for bit (nothing in it runs in another order fused).
class AttentionLayerCase {
 public:
  // Three query heads a kv head: the fused split softmax's blocks of two take two, then one.
  static constexpr int kSlots = 8, kHidden = 512, kHeads = 6, kKvHeads = 2, kHeadDim = 128, kRotaryDim = 64;
  static constexpr int64_t kIntermediate = 1024, kMaxContext = 1024;
  static constexpr int kBlocksPerSlot = kMaxContext / kKvBlockSize;

  explicit AttentionLayerCase(cuda::DecodePhasesLaunch launch) : launch_(launch) {
    q_ = random_weight(2 * kHeads * kHeadDim, kHidden);
    k_ = random_weight(kKvHeads * kHeadDim, kHidden);
    v_ = random_weight(kKvHeads * kHeadDim, kHidden);
    o_ = random_weight(kHidden, kHeads * kHeadDim);
    gate_ = random_weight(kIntermediate, kHidden);
    up_ = random_weight(kIntermediate, kHidden);
    down_ = random_weight(kHidden, kIntermediate);
    input_norm_ = upload(random_floats(kHidden));
    post_norm_ = upload(random_floats(kHidden));
    q_norm_ = upload(random_floats(kHeadDim));
    k_norm_ = upload(random_floats(kHeadDim));
    std::vector<float> inv_freq(kRotaryDim / 2);
    for (int i = 0; i < kRotaryDim / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / kRotaryDim);
    inv_freq_ = upload(inv_freq);
    std::vector<int32_t> tables(kSlots * kBlocksPerSlot);
    for (int i = 0; i < kSlots * kBlocksPerSlot; ++i) tables[i] = i;
    block_tables_ = upload(tables);
    const int64_t pool = int64_t{kSlots} * kMaxContext * kKvHeads * kHeadDim;
    const std::vector<uint16_t> keys = to_bf16(random_floats(pool)), values = to_bf16(random_floats(pool));
    const std::vector<float> x = random_floats(kSlots * kHidden);
    for (Path* p : {&fused_, &unfused_}) {
      p->x = upload(x);
      p->h = upload(std::vector<uint16_t>(kSlots * kHidden, 0));
      p->mlp_in = upload(std::vector<uint16_t>(kSlots * kHidden, 0));
      p->q_proj = poisoned<float>(kSlots * 2 * kHeads * kHeadDim);
      p->k = poisoned<float>(kSlots * kKvHeads * kHeadDim);
      p->v = poisoned<float>(kSlots * kKvHeads * kHeadDim);
      p->query = poisoned<float>(kSlots * kHeads * kHeadDim);
      p->o_in = poisoned<uint16_t>(kSlots * kHeads * kHeadDim);
      p->sublayer_out = poisoned<float>(kSlots * kHidden);
      p->down_in = poisoned<uint16_t>(kSlots * kIntermediate);
      p->key_cache = upload(keys);
      p->value_cache = upload(values);
      p->workspace = poisoned<float>(cuda::attention_workspace_floats(kSlots, kHeads, kHeadDim, cuda::kAttentionMaxSplits));
      p->counts = upload(std::vector<int32_t>(cuda::kDecodePhaseCounts, 0));
      p->snapshots = poisoned<float>(2 * kSlots * kHidden);
    }
  }

  // A decode step of slots 0..tokens-1, sequence t at position + 9 t (across KV blocks), by both paths from the
  // fused path's residual stream and caches, the first norm adding a fresh random delta.
  void step(int tokens, int position, const LaunchQueue& fused) {
    for (DeviceBuffer Path::*member : {&Path::x, &Path::key_cache, &Path::value_cache}) {
      CUDA_CHECK(cudaMemcpy((unfused_.*member).data(), (fused_.*member).data(), (fused_.*member).bytes(),
                            cudaMemcpyDeviceToDevice));
    }
    chunks_ = DecodeChunks(tokens, position, 9);
    delta_ = upload(random_floats(tokens * kHidden));
    fused([&](cudaStream_t stream) {
      CUDA_CHECK(cuda::launch_decode_phases(phases(fused_, tokens), chunks_.view(tokens), fused_.counts.as<int32_t>(),
                                            nullptr, launch_, stream));
    });
    cuda::launch_decode_phases_unfused(phases(unfused_, tokens), chunks_.view(tokens), nullptr);
    CUDA_CHECK(cudaDeviceSynchronize());
  }

  void compare(int tokens, const std::string& label) const {
    EXPECT_EQ(fused_.counts.download<int32_t>(), std::vector<int32_t>(cuda::kDecodePhaseCounts, 0))
        << label << ": the task counts are left zero";
    const auto bits = [&](DeviceBuffer Path::*member, int64_t words, const char* name) {
      EXPECT_EQ(head<uint32_t>(fused_.*member, words), head<uint32_t>(unfused_.*member, words)) << label << ": " << name;
    };
    bits(&Path::x, tokens * kHidden, "x");
    bits(&Path::h, tokens * kHidden / 2, "h");
    bits(&Path::q_proj, tokens * 2 * kHeads * kHeadDim, "q_proj");
    bits(&Path::k, tokens * kKvHeads * kHeadDim, "k");
    bits(&Path::v, tokens * kKvHeads * kHeadDim, "v");
    bits(&Path::query, tokens * kHeads * kHeadDim, "query");
    bits(&Path::o_in, tokens * kHeads * kHeadDim / 2, "attention output");
    bits(&Path::sublayer_out, tokens * kHidden, "sublayer_out");
    bits(&Path::mlp_in, tokens * kHidden / 2, "mlp_in");
    bits(&Path::down_in, tokens * kIntermediate / 2, "down_in");
    bits(&Path::snapshots, 2 * kSlots * kHidden, "snapshots");
    EXPECT_EQ(fused_.key_cache.download<uint16_t>(), unfused_.key_cache.download<uint16_t>()) << label << ": keys";
    EXPECT_EQ(fused_.value_cache.download<uint16_t>(), unfused_.value_cache.download<uint16_t>()) << label << ": values";
  }

 private:
  struct Path {
    DeviceBuffer x, h, mlp_in, q_proj, k, v, query, o_in, sublayer_out, down_in, key_cache, value_cache, workspace,
        counts, snapshots;
  };

  cuda::DecodePhases phases(const Path& p, int tokens) const {
    const cuda::PagedKvLayout layout{kKvBlockSize, kBlocksPerSlot, kKvHeads, kHeadDim};
    cuda::DecodePhases phases;
    phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {p.x.as<float>(), delta_.as<float>(), input_norm_.as<float>(),
                                                          1.0f, 1e-6f, kHidden, p.h.data(), kHidden,
                                                          p.snapshots.as<float>()};
    phases.add(cuda::DecodePhaseKind::Linear).linear = {{q_.view(), k_.view(), v_.view()},
                                                        {p.q_proj.data(), p.k.data(), p.v.data()}, 3, p.h.data(), 2, 4,
                                                        nullptr, 0};
    phases.add(cuda::DecodePhaseKind::AttentionPrep).attention_prep = {
        p.q_proj.as<float>(), p.k.as<float>(), chunks_.start.as<int32_t>(),
        cuda::AttentionPrepShape{kHeads, kKvHeads, kHeadDim, kRotaryDim, true, true, 1.0f, 1e-6f}, inv_freq_.as<float>(),
        q_norm_.as<float>(), k_norm_.as<float>(), p.query.as<float>(),
        cuda::KvCacheWrite{p.v.as<float>(), chunks_.slot.as<int32_t>(), block_tables_.as<int32_t>(), layout,
                           p.key_cache.data(), p.value_cache.data()}};
    phases.add(cuda::DecodePhaseKind::Attention).attention = {
        p.query.as<float>(), chunks_.slot.as<int32_t>(), chunks_.start.as<int32_t>(), kHeads, block_tables_.as<int32_t>(),
        layout, p.key_cache.data(), p.value_cache.data(), cuda::attention_splits(tokens, kKvHeads, kMaxContext),
        p.workspace.as<float>(),
        cuda::AttentionOutput{p.q_proj.as<float>() + kHeadDim, 2 * kHeads * kHeadDim, 2 * kHeadDim, p.o_in.data(),
                              kHeads * kHeadDim}};
    phases.add(cuda::DecodePhaseKind::Linear).linear = {{o_.view()}, {p.sublayer_out.data()}, 1, p.o_in.data(), 1, 8,
                                                        nullptr, 0};
    phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {p.x.as<float>(), p.sublayer_out.as<float>(),
                                                          post_norm_.as<float>(), 1.0f, 1e-6f, kHidden, p.mlp_in.data(),
                                                          kHidden, p.snapshots.as<float>() + kSlots * kHidden};
    phases.add(cuda::DecodePhaseKind::LinearSwiglu).linear = {{gate_.view(), up_.view()}, {}, 2, p.mlp_in.data(), 2, 4,
                                                              p.down_in.data(), kIntermediate};
    phases.add(cuda::DecodePhaseKind::Linear).linear = {{down_.view()}, {p.sublayer_out.data()}, 1, p.down_in.data(), 1,
                                                        8, nullptr, 0};
    return phases;
  }

  cuda::DecodePhasesLaunch launch_;
  DeviceNvfp4 q_, k_, v_, o_, gate_, up_, down_;
  DeviceBuffer input_norm_, post_norm_, q_norm_, k_norm_, inv_freq_, block_tables_, delta_;
  DecodeChunks chunks_{1, 0};
  Path fused_, unfused_;
};

// The 27B's Gated DeltaNet layer with a narrower MLP (258 input-projection tasks, 48 heads a sequence, 320
// output-projection and down tasks: more heads and output tasks at 8 sequences than the H200's 264 resident
// blocks), and a key head dim of 64 (the delta rule's other instance).
const LayerShape kShapes[] = {{5120, 2048, {16, 48, 128, 128, 4}}, {512, 1024, {2, 4, 64, 128, 4}}};

constexpr cuda::DecodePhasesLaunch kLaunches[] = {cuda::DecodePhasesLaunch::Cooperative,
                                                  cuda::DecodePhasesLaunch::Programmatic};

std::string name(Phases which) {
  switch (which) {
    case Phases::Mixer: return "mixer";
    case Phases::Mlp: return "mlp";
    case Phases::Layer: return "layer";
    default: return "mixer then mlp";
  }
}

std::string name(cuda::DecodePhasesLaunch launch) {
  return launch == cuda::DecodePhasesLaunch::Cooperative ? "cooperative" : "programmatic";
}

void run_eagerly(const std::function<void(cudaStream_t)>& queue) { queue(nullptr); }

// Queues `queue`'s launches into a CUDA graph on a stream of its own and replays it once.
void replay_in_graph(const std::function<void(cudaStream_t)>& queue) {
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaGraph_t graph;
  CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  queue(stream);
  CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_CHECK(cudaGraphLaunch(exec, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(GpuDecodePhases, MatchTheUnfusedLaunchesStepByStep) {
  require_gpu();
  for (const LayerShape& shape : kShapes) {
    LayerCase c(shape, cuda::DecodePhasesLaunch::Cooperative);
    int step = 0;
    for (Phases which : {Phases::Mixer, Phases::Mlp, Phases::Layer, Phases::MixerThenMlp}) {
      for (int tokens : {1, 3, 4, 8}) {
        if (which != Phases::MixerThenMlp) {
          ASSERT_EQ(cuda::decode_phases_unsupported(c.fused_phases(which), tokens), "") << name(which);
        }
        for (int repeat = 0; repeat < 2; ++repeat, ++step) {
          c.step(which, tokens, step, run_eagerly);
          c.compare(which, tokens, "hidden " + std::to_string(shape.hidden) + ", " + name(which) + ", " +
                                       std::to_string(tokens) + " tokens, step " + std::to_string(step));
        }
      }
    }
  }
}

// As the decode step runs it: captured into a CUDA graph and replayed, the counts set back to zero by each replay;
// launched both ways.
TEST(GpuDecodePhases, ReplayFromACudaGraphEitherLaunch) {
  require_gpu();
  for (cuda::DecodePhasesLaunch launch : kLaunches) {
    LayerCase c(kShapes[1], launch);
    int step = 0;
    for (int tokens : {1, 8}) {
      for (int repeat = 0; repeat < 3; ++repeat, ++step) {
        c.step(Phases::Layer, tokens, step, replay_in_graph);
        c.compare(Phases::Layer, tokens, name(launch) + ", " + std::to_string(tokens) + " tokens, graph step " +
                                             std::to_string(step));
      }
    }
  }
}

// An attention layer at 1..8 sequences and positions across KV blocks, eagerly and from a graph, both launches.
TEST(GpuDecodePhases, AttentionLayerMatchesTheUnfusedLaunches) {
  require_gpu();
  for (cuda::DecodePhasesLaunch launch : kLaunches) {
    AttentionLayerCase c(launch);
    int position = 5;
    for (int tokens : {1, 3, 8}) {
      for (const LaunchQueue& queue : {LaunchQueue(run_eagerly), LaunchQueue(replay_in_graph)}) {
        c.step(tokens, position, queue);
        c.compare(tokens, name(launch) + ", " + std::to_string(tokens) + " tokens at " + std::to_string(position));
        position += 7;
      }
    }
  }
}

TEST(GpuDecodePhases, TraceEveryTask) {
  require_gpu();
  for (cuda::DecodePhasesLaunch launch : kLaunches) {
    LayerCase c(kShapes[1], launch);
    for (int tokens : {1, 8}) c.expect_traced(tokens);
  }
}

TEST(GpuDecodePhases, NameWhatTheyCannotRun) {
  require_gpu();
  LayerCase c(kShapes[1], cuda::DecodePhasesLaunch::Cooperative);
  const cuda::DecodePhases layer = c.fused_phases(Phases::Layer);
  EXPECT_EQ(cuda::decode_phases_unsupported(layer, 9), "a step of 1..8 sequences");
  EXPECT_EQ(cuda::decode_phases_unsupported(c.phases_sharing_activations(), 1),
            "a buffer of activations for each linear phase");
  cuda::DecodePhases odd_split = layer;
  odd_split.phase[1].linear.k_split = 3;
  EXPECT_EQ(cuda::decode_phases_unsupported(odd_split, 1), "a K split of 1, 2, 4 or 8 warps");
}

}  // namespace
}  // namespace uberlm
