// Paged KV cache append and split (flash-decoding) GQA attention against cpu::attend_one_token over the
// same bf16-rounded keys and values, for several sequences in shuffled blocks, head dims up to 256,
// GQA groups of 1 to 12 and 1 to 32 splits.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "ops/cpu/attention.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/kv_cache.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// Same bf16 inputs; fp32 softmax and sums in another order (online, merged over warps and splits).
constexpr double kTolerance = 1e-4;

TEST(GpuOps, PagedAttentionMatchesCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  struct Case {
    int heads, kv_heads, head_dim;
  };
  const Case cases[] = {{3, 1, 24}, {6, 2, 64}, {24, 4, 256}, {12, 1, 16}, {16, 4, 256}};
  const std::vector<int> lengths = {1, 37, 300};
  int64_t checked = 0;
  for (const Case& c : cases) {
    const int block_size = 16, max_len = 300;
    const int max_blocks = (max_len + block_size - 1) / block_size;
    const int slots = static_cast<int>(lengths.size()), num_blocks = slots * max_blocks;
    const cuda::PagedKvLayout layout{block_size, max_blocks, c.kv_heads, c.head_dim};
    const int64_t kv_width = static_cast<int64_t>(c.kv_heads) * c.head_dim, q_width = static_cast<int64_t>(c.heads) * c.head_dim;
    std::vector<int32_t> tables(num_blocks);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng());

    // Every token of every sequence appended in one launch.
    std::vector<int32_t> token_slots, token_positions;
    for (int s = 0; s < slots; ++s) {
      for (int p = 0; p < lengths[s]; ++p) {
        token_slots.push_back(s);
        token_positions.push_back(p);
      }
    }
    const int64_t total = static_cast<int64_t>(token_slots.size());
    const std::vector<float> keys = random_floats(total * kv_width), values = random_floats(total * kv_width);
    const int64_t pool = static_cast<int64_t>(num_blocks) * block_size * kv_width;
    DeviceBuffer d_k = upload(keys), d_v = upload(values), d_slots = upload(token_slots), d_pos = upload(token_positions);
    DeviceBuffer d_tables = upload(tables), d_kc = poisoned<uint16_t>(pool), d_vc = poisoned<uint16_t>(pool);
    sync_and_check(cuda::launch_kv_cache_append(d_k.as<float>(), d_v.as<float>(), d_slots.as<int32_t>(),
                                                d_pos.as<int32_t>(), total, d_tables.as<int32_t>(), layout,
                                                d_kc.data(), d_vc.data(), nullptr));

    // Queries: the last token of each sequence (decode) and a few earlier positions (prefill rows).
    std::vector<int32_t> q_slots, q_positions;
    for (int s = 0; s < slots; ++s) {
      for (int p : {lengths[s] - 1, lengths[s] / 2, 0}) {
        q_slots.push_back(s);
        q_positions.push_back(p);
      }
    }
    const int64_t queries = static_cast<int64_t>(q_slots.size());
    const std::vector<float> query = random_floats(queries * q_width);
    const std::vector<float> keys_bf16 = bf16_rounded(keys), values_bf16 = bf16_rounded(values);
    std::vector<float> ref(queries * q_width);
    const cpu::AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
    for (int64_t i = 0; i < queries; ++i) {
      int64_t first = 0;  // row of the sequence's position 0 in the appended tokens
      for (int s = 0; s < q_slots[i]; ++s) first += lengths[s];
      cpu::attend_one_token(query.data() + i * q_width, keys_bf16.data() + first * kv_width,
                            values_bf16.data() + first * kv_width, q_positions[i], shape, ref.data() + i * q_width);
    }
    DeviceBuffer d_query = upload(query), d_qs = upload(q_slots), d_qp = upload(q_positions);
    for (int splits : {1, 3, 32}) {
      DeviceBuffer workspace = poisoned<float>(cuda::attention_workspace_floats(queries, c.heads, c.head_dim, splits));
      DeviceBuffer d_out = poisoned<float>(queries * q_width);
      sync_and_check(cuda::launch_attention_decode(d_query.as<float>(), d_qs.as<int32_t>(), d_qp.as<int32_t>(), queries,
                                                   c.heads, d_tables.as<int32_t>(), layout, d_kc.data(), d_vc.data(),
                                                   splits, workspace.as<float>(), d_out.as<float>(), nullptr));
      checked += expect_close(d_out.download<float>(), ref, kTolerance,
                              "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " head_dim " +
                                  std::to_string(c.head_dim) + " splits " + std::to_string(splits));
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(GpuOps, AttentionSplitsStayInRange) {
  for (int64_t tokens : {1, 7, 64, 2048}) {
    for (int64_t context : {1, 100, 262144}) {
      const int splits = cuda::attention_splits(tokens, 4, context);
      EXPECT_GE(splits, 1);
      EXPECT_LE(splits, cuda::kAttentionMaxSplits);
    }
  }
}

}  // namespace
}  // namespace uberlm
