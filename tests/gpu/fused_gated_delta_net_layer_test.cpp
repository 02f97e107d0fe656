// The fused Gated DeltaNet layer kernel (conv1d, l2 norms, delta rule, gated norm) against the unfused CPU ops
// it replaces (ops/cpu/gated_delta_net.h's per-token steps, cpu::gated_rms_norm) over forwards of several
// sequences that continue from the kernel's own states: new ones, continuing ones, decode tokens and
// multi-token chunks; outputs and states compared.
#include <gtest/gtest.h>

#include <algorithm>

#include "fused_kernel_harness.h"
#include "ops/cpu/gated_delta_net.h"
#include "ops/cpu/norm.h"
#include "ops/cuda/fused/gated_delta_net_layer.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// Token by token (decode steps, head dims over 128). Recurrent state: fp32 sums over k_head_dim in another
// order, carried through up to 60 steps. Output: bf16, one rounding (2^-9 relative) on top of the state's error.
constexpr double kStateTolerance = 1e-4;
constexpr double kOutTolerance = 1.0 / 256;
// The chunked form (other steps): its products round their operands to tf32 (2^-11 relative). Measured on
// the H200 over the shapes below: output 3.5e-3, state 5.6e-4 at most.
constexpr double kChunkedStateTolerance = 1e-3;
constexpr double kChunkedOutTolerance = 5e-3;

struct Chunk {
  int slot;
  int start;   // 0: a new sequence
  int length;
};

// One layer's weights and its states per slot, on the device and in the CPU reference.
class DeltaNetCase {
 public:
  static constexpr int kSlots = 4;

  DeltaNetCase(const cpu::GatedDeltaNetShape& shape, cuda::GatedDeltaNetForm form)
      : shape_(shape),
        form_(form),
        dims_{shape.num_k_heads, shape.num_v_heads, shape.k_head_dim, shape.v_head_dim, shape.conv_kernel},
        conv_weight_(random_floats(shape.conv_dim() * shape.conv_kernel, 0.5f)),
        a_log_(random_floats(shape.num_v_heads)),
        dt_bias_(random_floats(shape.num_v_heads)),
        norm_(random_floats(shape.v_head_dim)),
        history_(shape.conv_dim() * (shape.conv_kernel - 1)),
        state_size_(static_cast<int64_t>(shape.num_v_heads) * shape.k_head_dim * shape.v_head_dim),
        conv_(kSlots * history_),
        recurrent_(random_floats(kSlots * state_size_, 0.1f)),
        lengths_(kSlots, 0),
        d_conv_weight_(upload(conv_weight_)),
        d_a_log_(upload(a_log_)),
        d_dt_bias_(upload(dt_bias_)),
        d_norm_(upload(norm_)),
        d_ring_(poisoned<float>(kSlots * shape.conv_kernel * shape.conv_dim())),
        d_readers_(upload(std::vector<int32_t>(kSlots * shape.num_k_heads, 0))) {}

  // Gives `slot` a random history of `length` tokens (the conv inputs before position 0 are zero).
  void continue_from(int slot, int length) {
    const int kernel = shape_.conv_kernel;
    const std::vector<float> inputs = random_floats(history_);
    float* conv = conv_.data() + slot * history_;
    for (int64_t ch = 0; ch < shape_.conv_dim(); ++ch) {
      for (int j = 0; j < kernel - 1; ++j) {
        const int64_t position = length - (kernel - 1) + j;
        conv[ch * (kernel - 1) + j] = position >= 0 ? inputs[ch * (kernel - 1) + j] : 0.0f;
      }
    }
    lengths_[slot] = length;
    upload_states();
  }

  // One launch over `chunks` on fresh random inputs, then the reference; their outputs and states.
  std::vector<FusedOutput> run(const std::vector<Chunk>& chunks, const std::string& label) {
    const int64_t conv_dim = shape_.conv_dim(), value_dim = shape_.value_dim(), hv = shape_.num_v_heads;
    std::vector<int32_t> first, length, slot, start;
    int64_t tokens = 0, shortest = chunks.front().length, longest = 0;
    for (const Chunk& chunk : chunks) {
      EXPECT_TRUE(chunk.start == 0 || chunk.start == lengths_[chunk.slot]) << label << ": test plan";
      first.push_back(static_cast<int32_t>(tokens));
      length.push_back(chunk.length);
      slot.push_back(chunk.slot);
      start.push_back(chunk.start);
      tokens += chunk.length;
      shortest = std::min<int64_t>(shortest, chunk.length);
      longest = std::max<int64_t>(longest, chunk.length);
    }
    const std::vector<float> qkv = random_floats(tokens * conv_dim), z = random_floats(tokens * value_dim, 3.0f);
    const std::vector<float> a = random_floats(tokens * hv, 2.0f), b = random_floats(tokens * hv, 2.0f);
    const int64_t out_stride = value_dim + 8;
    DeviceBuffer d_qkv = upload(qkv), d_z = upload(z), d_a = upload(a), d_b = upload(b);
    DeviceBuffer d_first = upload(first), d_length = upload(length), d_slot = upload(slot), d_start = upload(start);
    DeviceBuffer d_out = poisoned<uint16_t>(tokens * out_stride);
    const int64_t scratch_floats = cuda::gated_delta_net_chunked_scratch_floats(dims_, tokens);
    DeviceBuffer d_scratch = poisoned<float>(std::max<int64_t>(scratch_floats, 1));
    const cuda::DeviceChunks device_chunks{d_first.as<int32_t>(), d_length.as<int32_t>(), d_slot.as<int32_t>(),
                                           d_start.as<int32_t>(), static_cast<int>(chunks.size())};
    sync_and_check(cuda::launch_gated_delta_net_layer(d_qkv.as<float>(), d_z.as<float>(), d_a.as<float>(), d_b.as<float>(),
                                                weights(), device_chunks, tokens, {shortest, longest}, form_, dims_,
                                                device_state(),
                                                {d_scratch.as<float>(), scratch_floats}, d_out.data(), out_stride,
                                                nullptr));

    std::vector<float> core(tokens * value_dim), mixed(conv_dim), ref(tokens * value_dim);
    for (size_t c = 0; c < chunks.size(); ++c) {
      const Chunk& chunk = chunks[c];
      float* conv = conv_.data() + chunk.slot * history_;
      float* s = recurrent_.data() + chunk.slot * state_size_;
      if (chunk.start == 0) {
        std::fill(conv, conv + history_, 0.0f);
        std::fill(s, s + state_size_, 0.0f);
      }
      for (int64_t t = first[c]; t < first[c] + chunk.length; ++t) {
        cpu::causal_conv1d_step(qkv.data() + t * conv_dim, conv, conv_weight_.data(), conv_dim, shape_.conv_kernel,
                                mixed.data());
        cpu::gated_delta_rule_step(mixed.data(), a.data() + t * hv, b.data() + t * hv, a_log_.data(), dt_bias_.data(),
                                   shape_, s, core.data() + t * value_dim);
      }
      lengths_[chunk.slot] = chunk.start + chunk.length;
    }
    cpu::gated_rms_norm(core.data(), z.data(), tokens * hv, shape_.v_head_dim, norm_.data(), 1e-6f, ref.data());

    const std::vector<float> out = from_bf16(d_out.download<uint16_t>());
    std::vector<float> got(tokens * value_dim);
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(out.begin() + t * out_stride, value_dim, got.begin() + t * value_dim);
    }
    // States carry a chunked launch's rounding into every later launch.
    const bool decode_shape =
        cuda::gated_delta_net_runs_decode_shape(tokens, static_cast<int64_t>(chunks.size()), form_);
    const bool chunked = cuda::gated_delta_net_chunk_runs_chunked(dims_, decode_shape, longest);
    chunked_before_ = chunked_before_ || chunked;
    const std::string form = chunked ? " (chunked)" : "";
    std::vector<FusedOutput> outputs = {
        {label + form + " output", got, ref, chunked_before_ ? kChunkedOutTolerance : kOutTolerance}};
    for (FusedOutput& state : states(label + form, chunked_before_ ? kChunkedStateTolerance : kStateTolerance)) {
      outputs.push_back(std::move(state));
    }
    return outputs;
  }

 private:
  cuda::GatedDeltaNetParams weights() const {
    return {d_conv_weight_.as<float>(), d_a_log_.as<float>(), d_dt_bias_.as<float>(), d_norm_.as<float>(), 1e-6f};
  }
  cuda::GatedDeltaNetState device_state() {
    return {d_ring_.as<float>(), d_recurrent_.as<float>(), d_readers_.as<int32_t>()};
  }

  // Ring entry p % kernel of a slot holds the input of position p: the CPU's history, oldest first.
  int64_t ring_index(int slot, int64_t position, int64_t ch) const {
    return (static_cast<int64_t>(slot) * shape_.conv_kernel + position % shape_.conv_kernel) * shape_.conv_dim() + ch;
  }

  void upload_states() {
    std::vector<float> ring = d_ring_.download<float>();
    const int history = shape_.conv_kernel - 1;
    for (int slot = 0; slot < kSlots; ++slot) {
      for (int64_t ch = 0; ch < shape_.conv_dim(); ++ch) {
        for (int j = 0; j < history; ++j) {
          const int64_t position = lengths_[slot] - history + j;
          if (position >= 0) ring[ring_index(slot, position, ch)] = conv_[slot * history_ + ch * history + j];
        }
      }
    }
    d_ring_ = upload(ring);
    d_recurrent_ = upload(recurrent_);
  }

  std::vector<FusedOutput> states(const std::string& label, double state_tolerance) {
    const std::vector<float> ring = d_ring_.download<float>(), recurrent = d_recurrent_.download<float>();
    const int history = shape_.conv_kernel - 1;
    std::vector<float> ring_got, ring_ref, recurrent_got, recurrent_ref;
    for (int slot = 0; slot < kSlots; ++slot) {
      if (lengths_[slot] == 0) continue;
      for (int64_t ch = 0; ch < shape_.conv_dim(); ++ch) {
        for (int j = 0; j < history; ++j) {
          const int64_t position = lengths_[slot] - history + j;
          if (position < 0) continue;
          ring_got.push_back(ring[ring_index(slot, position, ch)]);
          ring_ref.push_back(conv_[slot * history_ + ch * history + j]);
        }
      }
      recurrent_got.insert(recurrent_got.end(), recurrent.begin() + slot * state_size_,
                           recurrent.begin() + (slot + 1) * state_size_);
      recurrent_ref.insert(recurrent_ref.end(), recurrent_.begin() + slot * state_size_,
                           recurrent_.begin() + (slot + 1) * state_size_);
    }
    const std::vector<int32_t> readers = d_readers_.download<int32_t>();
    EXPECT_TRUE(std::all_of(readers.begin(), readers.end(), [](int32_t n) { return n == 0; }))
        << label << ": ring_readers not reset";
    return {{label + " conv ring", ring_got, ring_ref, 0.0},
            {label + " recurrent state", recurrent_got, recurrent_ref, state_tolerance}};
  }

  cpu::GatedDeltaNetShape shape_;
  cuda::GatedDeltaNetForm form_;
  cuda::GatedDeltaNetDims dims_;
  std::vector<float> conv_weight_, a_log_, dt_bias_, norm_;
  int64_t history_, state_size_;
  std::vector<float> conv_, recurrent_;  // reference states: [slots, conv_dim, kernel - 1], [slots, Hv, dk, dv]
  std::vector<int> lengths_;
  bool chunked_before_ = false;  // a launch in the chunked form has run on these states
  DeviceBuffer d_conv_weight_, d_a_log_, d_dt_bias_, d_norm_, d_ring_, d_recurrent_, d_readers_;
};

// Five launches on one layer: new and continuing sequences, decode steps (their own blocking), restarts.
std::vector<FusedOutput> run_sequence_of_launches(const cpu::GatedDeltaNetShape& shape, cuda::GatedDeltaNetForm form) {
  DeltaNetCase layer(shape, form);
  layer.continue_from(0, 9);
  layer.continue_from(1, 1);  // shorter than the conv's history
  std::vector<FusedOutput> outputs;
  auto launch = [&](const std::vector<Chunk>& chunks, const std::string& label) {
    for (FusedOutput& out : layer.run(chunks, label)) outputs.push_back(std::move(out));
  };
  // A new 40-token prefill (three windows), a 5-token chunk continuing (it overwrites ring entries that
  // other blocks read), a decode token.
  launch({{2, 0, 40}, {0, 9, 5}, {1, 1, 1}}, "prefill");
  // Decode (its own blocking): every slot one token, slot 3 a new sequence; four sequences take the blocks of
  // two threads a column where the shape allows (gated_delta_net_decode_runs_many_sequence_blocks), one (decode
  // 3) those of four.
  launch({{0, 14, 1}, {1, 2, 1}, {2, 40, 1}, {3, 0, 1}}, "decode 1");
  launch({{3, 1, 1}, {2, 41, 1}, {0, 15, 1}, {1, 3, 1}}, "decode 2");
  // Two-token chunk, a restart of slot 3 over a window and a token, decode.
  launch({{1, 4, 2}, {3, 0, 17}, {0, 16, 1}}, "mixed");
  launch({{0, 17, 1}}, "decode 3");
  // Chunks of kChunkedDeltaRuleMinTokens or more run chunked, shorter ones token by token in the same
  // launch: two solves and a part, exactly one, one and one token, beside a decode token; then part of one
  // solve beside short chunks; then decode continues from the states they left.
  launch({{0, 18, 130}, {3, 0, 64}, {1, 6, 65}, {2, 42, 1}}, "long chunks beside a decode token");
  launch({{2, 43, 40}, {0, 148, 1}, {3, 64, 5}}, "a partial solve beside short chunks");
  launch({{0, 149, 1}, {3, 69, 1}, {1, 71, 1}, {2, 83, 1}}, "decode 4");
  return outputs;
}

TEST(FusedKernels, GatedDeltaNetLayerMatchesTheUnfusedOps) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  // Key head dims 20 to 256, value head dims from 12 (one column slice) to 512 (a cluster of 8 slices
  // of a multi-token chunk, of 4 in decode), 1 to 3 value heads per key head, conv kernels 2 to 6. The
  // 27B shape is the third.
  const cpu::GatedDeltaNetShape shapes[] = {{2, 4, 20, 12, 4},  {4, 8, 64, 64, 4},  {16, 48, 128, 128, 4},
                                            {2, 2, 256, 40, 3}, {1, 2, 32, 512, 2}, {2, 6, 128, 128, 4},
                                            {2, 4, 64, 48, 6}};
  const cuda::GatedDeltaNetDims shape_27b{16, 48, 128, 128, 4};
  ASSERT_TRUE(cuda::gated_delta_net_decode_runs_many_sequence_blocks(shape_27b, cuda::GatedDeltaNetForm::ByChunkLength, 4, 4));
  ASSERT_FALSE(cuda::gated_delta_net_decode_runs_many_sequence_blocks(shape_27b, cuda::GatedDeltaNetForm::ByChunkLength, 1, 1));
  ASSERT_FALSE(
      cuda::gated_delta_net_decode_runs_many_sequence_blocks(shape_27b, cuda::GatedDeltaNetForm::DecodeTokenByToken, 4, 4));
  std::vector<FusedCase> cases;
  for (const cpu::GatedDeltaNetShape& shape : shapes) {
    cases.push_back({"dk " + std::to_string(shape.k_head_dim) + " dv " + std::to_string(shape.v_head_dim),
                     [shape] { return run_sequence_of_launches(shape, cuda::GatedDeltaNetForm::ByChunkLength); }});
  }
  check_fused_kernel("gated_delta_net_layer", cases);
}

// --deterministic's form: every chunk, long prompts included, token by token in the decode shape, within the
// token-by-token tolerances (no chunked launch ever runs).
TEST(FusedKernels, GatedDeltaNetLayerDecodeFormMatchesTheUnfusedOps) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const cpu::GatedDeltaNetShape shapes[] = {{2, 4, 20, 12, 4}, {16, 48, 128, 128, 4}, {1, 2, 32, 512, 2}};
  std::vector<FusedCase> cases;
  for (const cpu::GatedDeltaNetShape& shape : shapes) {
    cases.push_back({"decode form dk " + std::to_string(shape.k_head_dim) + " dv " + std::to_string(shape.v_head_dim),
                     [shape] { return run_sequence_of_launches(shape, cuda::GatedDeltaNetForm::DecodeTokenByToken); }});
  }
  check_fused_kernel("gated_delta_net_layer", cases);
}

TEST(FusedKernels, GatedDeltaNetLayerRejectsUnsupportedShapes) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const cuda::DeviceChunks one_chunk{nullptr, nullptr, nullptr, nullptr, 1};
  const cuda::GatedDeltaNetParams weights{};
  const cuda::GatedDeltaNetState state{};
  for (const cuda::GatedDeltaNetDims& dims : {cuda::GatedDeltaNetDims{2, 3, 128, 128, 4}, cuda::GatedDeltaNetDims{1, 1, 320, 128, 4},
                                         cuda::GatedDeltaNetDims{1, 1, 128, 520, 4}, cuda::GatedDeltaNetDims{1, 1, 128, 128, 9},
                                         cuda::GatedDeltaNetDims{1, 1, 128, 128, 1}}) {
    EXPECT_EQ(cuda::launch_gated_delta_net_layer(nullptr, nullptr, nullptr, nullptr, weights, one_chunk, 1, {1, 1},
                                                 cuda::GatedDeltaNetForm::ByChunkLength, dims, state,
                                           {nullptr, 0}, nullptr, 0, nullptr),
              cudaErrorInvalidValue)
        << dims.num_k_heads << " " << dims.num_v_heads << " " << dims.k_head_dim << " " << dims.v_head_dim << " "
        << dims.conv_kernel;
  }
  // A 64-token chunk takes the chunked form, which needs its scratch.
  const cuda::GatedDeltaNetDims supported{2, 4, 128, 128, 4};
  EXPECT_EQ(cuda::launch_gated_delta_net_layer(nullptr, nullptr, nullptr, nullptr, weights, one_chunk, 64, {64, 64},
                                               cuda::GatedDeltaNetForm::ByChunkLength, supported, state, {nullptr, 0}, nullptr, 0, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace uberlm
