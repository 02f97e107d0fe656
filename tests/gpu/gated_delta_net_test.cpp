// Gated DeltaNet: causal conv1d and the recurrent delta rule over chunks of several sequences (a new one,
// one continuing from earlier states, one decode token) against the CPU per-token reference.
#include <gtest/gtest.h>

#include "gpu_test_util.h"
#include "ops/cpu/gated_delta_net.h"
#include "ops/cuda/gated_delta_net.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// fp32 throughout; sums over k_head_dim in another order, carried through up to 40 recurrent steps.
constexpr double kTolerance = 1e-4;

TEST(GpuOps, GatedDeltaNetMatchesCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const cpu::DeltaNetShape shapes[] = {{2, 4, 20, 12, 4}, {4, 8, 64, 64, 4}, {16, 48, 128, 128, 4}, {2, 2, 256, 40, 3}};
  int64_t checked = 0;
  for (const cpu::DeltaNetShape& shape : shapes) {
    const cuda::DeltaNetDims dims{shape.num_k_heads, shape.num_v_heads, shape.k_head_dim, shape.v_head_dim, shape.conv_kernel};
    const int64_t conv_dim = shape.conv_dim(), value_dim = shape.value_dim(), hv = shape.num_v_heads;
    const int64_t history = shape.conv_kernel - 1, state_size = hv * shape.k_head_dim * shape.v_head_dim;
    // Chunks: slot 2 new (start 0, 40 tokens), slot 0 continuing (start 9, 5 tokens), slot 1 decode (start 3).
    const std::vector<int32_t> first = {0, 40, 45}, length = {40, 5, 1}, slot = {2, 0, 1}, start = {0, 9, 3};
    const int slots = 3;
    const int64_t tokens = 46;
    const std::vector<float> qkv = random_floats(tokens * conv_dim), a = random_floats(tokens * hv, 2.0f);
    const std::vector<float> b = random_floats(tokens * hv, 2.0f), weight = random_floats(conv_dim * shape.conv_kernel, 0.5f);
    const std::vector<float> a_log = random_floats(hv), dt_bias = random_floats(hv);
    std::vector<float> conv_state = random_floats(slots * conv_dim * history);
    std::vector<float> state = random_floats(slots * state_size, 0.1f);

    DeviceBuffer d_qkv = upload(qkv), d_a = upload(a), d_b = upload(b), d_w = upload(weight);
    DeviceBuffer d_alog = upload(a_log), d_dt = upload(dt_bias), d_conv = upload(conv_state), d_state = upload(state);
    DeviceBuffer d_first = upload(first), d_len = upload(length), d_slot = upload(slot), d_start = upload(start);
    DeviceBuffer d_mixed = poisoned<float>(tokens * conv_dim), d_core = poisoned<float>(tokens * value_dim);
    const cuda::DeviceChunks chunks{d_first.as<int32_t>(), d_len.as<int32_t>(), d_slot.as<int32_t>(),
                                    d_start.as<int32_t>(), 3};
    sync_and_check(cuda::launch_causal_conv1d(d_qkv.as<float>(), chunks, d_w.as<float>(), conv_dim, shape.conv_kernel,
                                              d_conv.as<float>(), d_mixed.as<float>(), nullptr));
    const std::vector<float> mixed_gpu = d_mixed.download<float>();
    sync_and_check(cuda::launch_gated_delta_rule(d_mixed.as<float>(), d_a.as<float>(), d_b.as<float>(),
                                                 d_alog.as<float>(), d_dt.as<float>(), chunks, dims,
                                                 d_state.as<float>(), d_core.as<float>(), nullptr));

    std::vector<float> mixed_ref(tokens * conv_dim), core_ref(tokens * value_dim), scratch(conv_dim);
    for (int c = 0; c < 3; ++c) {
      float* conv = conv_state.data() + slot[c] * conv_dim * history;
      float* s = state.data() + slot[c] * state_size;
      if (start[c] == 0) {
        std::fill(conv, conv + conv_dim * history, 0.0f);
        std::fill(s, s + state_size, 0.0f);
      }
      for (int i = 0; i < length[c]; ++i) {
        const int64_t t = first[c] + i;
        cpu::causal_conv1d_step(qkv.data() + t * conv_dim, conv, weight.data(), conv_dim, shape.conv_kernel,
                                mixed_ref.data() + t * conv_dim);
        scratch.assign(mixed_ref.begin() + t * conv_dim, mixed_ref.begin() + (t + 1) * conv_dim);
        cpu::gated_delta_rule_step(scratch.data(), a.data() + t * hv, b.data() + t * hv, a_log.data(), dt_bias.data(),
                                   shape, s, core_ref.data() + t * value_dim);
      }
    }
    const std::string label = "k_head_dim " + std::to_string(shape.k_head_dim);
    checked += expect_close(mixed_gpu, mixed_ref, 1e-6, label + " conv1d");
    checked += expect_close(d_core.download<float>(), core_ref, kTolerance, label + " delta rule output");
    checked += expect_close(d_state.download<float>(), state, kTolerance, label + " recurrent state");
    checked += expect_close(d_conv.download<float>(), conv_state, 0.0, label + " conv state");
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace uberlm
