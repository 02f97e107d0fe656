// The fused attention input preparation (query/gate split, q/k norm, partial NeoX RoPE, key and value appended
// to the paged cache) against the unfused CPU ops it replaces (cpu::rms_norm, cpu::Rope, the cache append).
#include <gtest/gtest.h>

#include <cstring>

#include "fused_kernel_harness.h"
#include "ops/cpu/norm.h"
#include "ops/cpu/rope.h"
#include "ops/cuda/fused/qk_norm_rope_kv_append.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// fp32 throughout; cosf/sinf and the norm's sums differ from the CPU's by a few ulps.
constexpr double kTolerance = 2e-5;
// The cached key is that fp32 key rounded to bf16: a few-ulp fp32 difference can carry an element across a
// bf16 rounding boundary, one bf16 ulp apart, which is up to 2^-7 of an element at the bottom of its binade
// (8 significant bits). Seen on the H200: 2.5e-4 of the largest key in one of ~40 runs, and 4.13e-3 (over
// 2^-8) on 2026-12-04; a wrong rotation or norm is off by O(1).
constexpr double kCachedKeyTolerance = 1.0 / 128;

struct Shape {
  int heads, kv_heads, head_dim, rotary_dim;
  bool gated, qk_norm;
  NormStyle style;
};

// One shape on fresh random inputs: the fused kernel, then the CPU ops per token.
std::vector<FusedOutput> run_case(const Shape& c) {
  const int64_t tokens = 11;
  const int64_t q_rows = static_cast<int64_t>(c.heads) * c.head_dim * (c.gated ? 2 : 1);
  const int64_t q_width = static_cast<int64_t>(c.heads) * c.head_dim, kv_width = static_cast<int64_t>(c.kv_heads) * c.head_dim;
  const std::vector<float> q_proj = random_floats(tokens * q_rows, 2.0f);
  std::vector<float> k = random_floats(tokens * kv_width, 2.0f);
  const std::vector<float> q_norm = random_floats(c.head_dim), k_norm = random_floats(c.head_dim);
  std::vector<int32_t> positions(tokens);
  for (auto& p : positions) p = std::uniform_int_distribution<int>(0, 5000)(rng());
  const float theta = 1e7f;
  const cpu::Rope rope(c.rotary_dim, theta);
  std::vector<float> inv_freq(std::max(1, c.rotary_dim / 2));
  for (int j = 0; j < c.rotary_dim / 2; ++j) {
    inv_freq[j] = 1.0f / std::pow(theta, static_cast<float>(2 * j) / static_cast<float>(c.rotary_dim));
  }
  const std::vector<float> v = random_floats(tokens * kv_width, 2.0f);
  // Token t is appended at its position in slot t, whose block for that position is block t.
  const cuda::PagedKvLayout layout{16, 5001 / 16 + 1, c.kv_heads, c.head_dim};
  std::vector<int32_t> slots(tokens), tables(tokens * layout.max_blocks_per_slot, -1);
  for (int64_t t = 0; t < tokens; ++t) {
    slots[t] = static_cast<int32_t>(t);
    tables[t * layout.max_blocks_per_slot + positions[t] / layout.block_size] = static_cast<int32_t>(t);
  }
  const int64_t pool = tokens * layout.block_size * kv_width;
  DeviceBuffer d_v = upload(v), d_slots = upload(slots), d_tables = upload(tables);
  DeviceBuffer d_kc = poisoned<uint16_t>(pool), d_vc = poisoned<uint16_t>(pool);
  const cuda::KvCacheWrite cache{d_v.as<float>(), d_slots.as<int32_t>(), d_tables.as<int32_t>(), layout, d_kc.data(),
                                 d_vc.data()};
  DeviceBuffer d_q = upload(q_proj), d_k = upload(k), d_qn = upload(q_norm), d_kn = upload(k_norm);
  DeviceBuffer d_pos = upload(positions), d_freq = upload(inv_freq), d_query = poisoned<float>(tokens * q_width);
  const float offset = c.style == NormStyle::OnePlusWeight ? 1.0f : 0.0f;
  const cuda::AttentionPrepShape shape{c.heads, c.kv_heads, c.head_dim, c.rotary_dim, c.gated, c.qk_norm, offset, 1e-6f};
  sync_and_check(cuda::launch_qk_norm_rope_kv_append(d_q.as<float>(), d_k.as<float>(), d_pos.as<int32_t>(), tokens, shape,
                                           d_freq.as<float>(), d_qn.as<float>(), d_kn.as<float>(),
                                           d_query.as<float>(), cache, nullptr));
  std::vector<float> query_ref(tokens * q_width);
  for (int64_t t = 0; t < tokens; ++t) {
    float* q = query_ref.data() + t * q_width;
    for (int h = 0; h < c.heads; ++h) {
      std::memcpy(q + h * c.head_dim, q_proj.data() + t * q_rows + static_cast<int64_t>(h) * c.head_dim * (c.gated ? 2 : 1),
                  c.head_dim * sizeof(float));
    }
    float* kt = k.data() + t * kv_width;
    if (c.qk_norm) {
      cpu::rms_norm(q, c.heads, c.head_dim, q_norm.data(), c.style, 1e-6f, q);
      cpu::rms_norm(kt, c.kv_heads, c.head_dim, k_norm.data(), c.style, 1e-6f, kt);
    }
    rope.apply(q, c.heads, c.head_dim, positions[t]);
    rope.apply(kt, c.kv_heads, c.head_dim, positions[t]);
  }
  std::vector<FusedOutput> outputs = {{"query", d_query.download<float>(), query_ref, kTolerance},
                                      {"key", d_k.download<float>(), k, kTolerance}};
  // The cache holds the prepared key and the value, bf16-rounded, at each token's position.
  const std::vector<float> key_cache = from_bf16(d_kc.download<uint16_t>()), value_cache = from_bf16(d_vc.download<uint16_t>());
  std::vector<float> cached_keys, cached_values;
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t row = t * layout.block_size + positions[t] % layout.block_size;
    cached_keys.insert(cached_keys.end(), key_cache.begin() + row * kv_width, key_cache.begin() + (row + 1) * kv_width);
    cached_values.insert(cached_values.end(), value_cache.begin() + row * kv_width,
                         value_cache.begin() + (row + 1) * kv_width);
  }
  outputs.push_back({"cached key", cached_keys, bf16_rounded(k), kCachedKeyTolerance});
  outputs.push_back({"cached value", cached_values, bf16_rounded(v), 0.0});
  return outputs;
}

TEST(FusedKernels, QkNormRopeKvAppendMatchesTheUnfusedOps) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  const Shape shapes[] = {{3, 1, 24, 24, true, true, NormStyle::OnePlusWeight},
                          {6, 2, 64, 16, true, true, NormStyle::OnePlusWeight},
                          {24, 4, 256, 64, true, true, NormStyle::OnePlusWeight},
                          {7, 1, 8, 8, false, false, NormStyle::Weight},
                          {5, 1, 24, 24, false, true, NormStyle::Weight}};
  std::vector<FusedCase> cases;
  for (const Shape& shape : shapes) {
    cases.push_back({"heads " + std::to_string(shape.heads) + " head_dim " + std::to_string(shape.head_dim),
                     [shape] { return run_case(shape); }});
  }
  check_fused_kernel("qk_norm_rope_kv_append", cases);
}

}  // namespace
}  // namespace uberlm
