// The fused decode phases' plan on the CPU (ops/cuda/fused/decode_phases.h; the launches are tested on the GPU):
// how many tasks each phase of a 27B layer deals at 1 and 8 sequences, as launched, and what the phases refuse,
// each with its reason.
#ifdef UBERLM_WITH_CUDA
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/fused/decode_phases.h"

namespace uberlm {
namespace {

// Addresses the plan only checks for alignment (nothing is read through them here).
template <typename T>
T* fake(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

Nvfp4Weight weight(int64_t rows, int64_t cols) {
  return {rows, cols, fake<const uint8_t>(0x100000), fake<const uint8_t>(0x200000), 1.0f, 0.0f,
          Nvfp4CodeOrder::GemvTiled};
}

constexpr int64_t kHidden = 5120, kIntermediate = 17408;

void add_norm(cuda::DecodePhases& phases, uintptr_t out) {
  phases.add(cuda::DecodePhaseKind::AddRmsNorm).norm = {fake<float>(0x1000000), fake<const float>(0x2000000),
                                                        fake<const float>(0x3000000), 1.0f, 1e-6f, kHidden,
                                                        fake<void>(out), kHidden, nullptr};
}

void add_mlp(cuda::DecodePhases& phases) {
  add_norm(phases, 0x5000000);
  phases.add(cuda::DecodePhaseKind::LinearSwiglu).linear = {{weight(kIntermediate, kHidden), weight(kIntermediate, kHidden)},
                                                            {}, 2, fake<const void>(0x5000000), 2, 4,
                                                            fake<void>(0x6000000), kIntermediate};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {{weight(kHidden, kIntermediate)}, {fake<void>(0x7000000)}, 1,
                                                      fake<const void>(0x6000000), 1, 8, nullptr, 0};
}

// The 27B's Gated DeltaNet layer as the decoder builds it.
cuda::DecodePhases delta_net_layer() {
  cuda::DecodePhases phases;
  add_norm(phases, 0x4000000);
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {weight(10240, kHidden), weight(6144, kHidden), weight(48, kHidden), weight(48, kHidden)},
      {fake<void>(0x8000000), fake<void>(0x9000000), fake<void>(0xa000000), fake<void>(0xb000000)}, 4,
      fake<const void>(0x4000000), 2, 4, nullptr, 0};
  phases.add(cuda::DecodePhaseKind::DeltaNetHeads).delta_net = {
      fake<const float>(0x8000000), fake<const float>(0x9000000), fake<const float>(0xb000000),
      fake<const float>(0xa000000), {}, {16, 48, 128, 128, 4}, {}, fake<void>(0xc000000), 6144};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {{weight(kHidden, 6144)}, {fake<void>(0x7000000)}, 1,
                                                      fake<const void>(0xc000000), 1, 8, nullptr, 0};
  add_mlp(phases);
  return phases;
}

// The 27B's gated attention layer: 24 query heads and 4 kv heads of 256 dims.
cuda::DecodePhases attention_layer(int64_t tokens) {
  const cuda::PagedKvLayout layout{16, 256, 4, 256};
  cuda::DecodePhases phases;
  add_norm(phases, 0x4000000);
  phases.add(cuda::DecodePhaseKind::Linear).linear = {
      {weight(12288, kHidden), weight(1024, kHidden), weight(1024, kHidden)},
      {fake<void>(0x8000000), fake<void>(0x9000000), fake<void>(0xa000000)}, 3, fake<const void>(0x4000000), 2, 4,
      nullptr, 0};
  phases.add(cuda::DecodePhaseKind::AttentionPrep).attention_prep = {
      fake<const float>(0x8000000), fake<float>(0x9000000), fake<const int32_t>(0xd000000),
      cuda::AttentionPrepShape{24, 4, 256, 64, true, true, 1.0f, 1e-6f}, nullptr, nullptr, nullptr,
      fake<float>(0xe000000), cuda::KvCacheWrite{fake<const float>(0xa000000), nullptr, nullptr, layout, nullptr, nullptr}};
  phases.add(cuda::DecodePhaseKind::Attention).attention = {
      fake<const float>(0xe000000), nullptr, nullptr, 24, nullptr, layout, nullptr, nullptr,
      cuda::attention_splits(tokens, 4, 4096), fake<float>(0xf000000),
      cuda::AttentionOutput{nullptr, 0, 0, fake<void>(0xc000000), 6144}};
  phases.add(cuda::DecodePhaseKind::Linear).linear = {{weight(kHidden, 6144)}, {fake<void>(0x7000000)}, 1,
                                                      fake<const void>(0xc000000), 1, 8, nullptr, 0};
  add_mlp(phases);
  return phases;
}

std::vector<int> tasks(const cuda::DecodePhases& phases, int64_t tokens) {
  const cuda::DecodePhaseTasks t = cuda::decode_phase_tasks(phases, tokens);
  return std::vector<int>(t.phase, t.phase + t.count);
}

TEST(DecodePhasesPlan, DealsTheTasksOfA27BLayer) {
  // Input projections: 16480 rows in blocks of 64; output projection and down: 5120 rows in 16s; gate/up: 17408
  // row pairs in 32s.
  EXPECT_EQ(tasks(delta_net_layer(), 1), (std::vector<int>{1, 258, 48, 320, 1, 544, 320}));
  EXPECT_EQ(tasks(delta_net_layer(), 8), (std::vector<int>{8, 258, 384, 320, 8, 544, 320}));
  EXPECT_EQ(cuda::decode_phases_unsupported(delta_net_layer(), 8), "");
  // Attention: q/k/v 14336 rows in 64s; (token, head) items of 28 heads, 8 a task; the split softmax in blocks of
  // two of a kv head's six query heads at every split; the combine a (token, head).
  const int splits_1 = cuda::attention_splits(1, 4, 4096), splits_8 = cuda::attention_splits(8, 4, 4096);
  EXPECT_EQ(tasks(attention_layer(1), 1), (std::vector<int>{1, 224, 4, 12 * splits_1, 24, 320, 1, 544, 320}));
  EXPECT_EQ(tasks(attention_layer(8), 8), (std::vector<int>{8, 224, 28, 96 * splits_8, 192, 320, 8, 544, 320}));
  EXPECT_EQ(cuda::decode_phases_unsupported(attention_layer(8), 8), "");
}

TEST(DecodePhasesPlan, NamesWhatItRefuses) {
  EXPECT_EQ(cuda::decode_phases_unsupported(delta_net_layer(), 9), "a step of 1..8 sequences");
  cuda::DecodePhases shared = delta_net_layer();
  shared.phase[5].linear.x = shared.phase[1].linear.x;  // gate/up reading the input projections' activations
  EXPECT_EQ(cuda::decode_phases_unsupported(shared, 1), "a buffer of activations for each linear phase");
  cuda::DecodePhases odd_split = delta_net_layer();
  odd_split.phase[1].linear.k_split = 3;
  EXPECT_EQ(cuda::decode_phases_unsupported(odd_split, 1), "a K split of 1, 2, 4 or 8 warps");
  cuda::DecodePhases long_conv = delta_net_layer();
  long_conv.phase[2].delta_net.dims.conv_kernel = 5;
  EXPECT_EQ(cuda::decode_phases_unsupported(long_conv, 1), "a conv kernel up to 4");
  cuda::DecodePhases misaligned = delta_net_layer();
  misaligned.phase[0].norm.x = fake<float>(0x1000004);
  EXPECT_EQ(cuda::decode_phases_unsupported(misaligned, 1), "16-byte aligned norm rows");
  // An attention layer (8 phases, 9 as launched) and a Gated DeltaNet layer's mixer (4, on buffers of their own):
  // 12 phases given, 13 as launched.
  cuda::DecodePhases two_mixers = attention_layer(1);
  cuda::DecodePhases mixer = delta_net_layer();
  mixer.phase[1].linear.x = fake<const void>(0x4100000);
  mixer.phase[3].linear.x = fake<const void>(0xc100000);
  for (int p = 0; p < 4; ++p) two_mixers.add(mixer.phase[p].kind) = mixer.phase[p];
  EXPECT_EQ(two_mixers.count, cuda::kMaxDecodePhases);
  EXPECT_EQ(cuda::decode_phases_unsupported(two_mixers, 1), "1..12 phases as launched");
  // A phase added to a full list.
  two_mixers.add(cuda::DecodePhaseKind::AddRmsNorm) = mixer.phase[0];
  EXPECT_TRUE(two_mixers.overfull);
  EXPECT_EQ(cuda::decode_phases_unsupported(two_mixers, 1), "1..12 phases as launched");
}

}  // namespace
}  // namespace uberlm
#endif
