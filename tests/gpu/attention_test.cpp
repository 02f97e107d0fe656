// Split (flash-decoding) GQA attention over a paged KV cache against cpu::attend_one_token over the same
// bf16 keys and values, for several sequences in shuffled blocks, head dims up to 256, GQA groups of 1
// to 12, 1 to 32 splits, with and without Qwen3.5's output gate; and the query-tiled tensor-core prefill
// kernels (mma.sync, and wgmma where the GPU has it) against the same reference, for chunks that start a
// sequence or continue a cached prefix.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "gpu_test_util.h"
#include "ops/cpu/activation.h"
#include "ops/cpu/attention.h"
#include "ops/cuda/attention_decode.h"
#include "ops/cuda/attention_prefill.h"

namespace uberlm {
namespace {
using namespace gpu_test;

// Same bf16 inputs; fp32 softmax and sums in another order (online, merged over warps and splits), then
// one bf16 rounding of the output (at most 2^-9 of each value).
constexpr double kTolerance = 1.0 / 256;

// A paged KV layout of 16-token blocks for `slots` sequences of up to max_len tokens, every slot's blocks
// scattered over the pool in a random order.
struct PagedCache {
  cuda::PagedKvLayout layout;
  int num_blocks;
  std::vector<int32_t> tables;
};

PagedCache paged_cache(int slots, int max_len, int kv_heads, int head_dim) {
  const int block_size = 16, max_blocks = (max_len + block_size - 1) / block_size;
  PagedCache cache{{block_size, max_blocks, kv_heads, head_dim}, slots * max_blocks, {}};
  cache.tables.resize(cache.num_blocks);
  std::iota(cache.tables.begin(), cache.tables.end(), 0);
  std::shuffle(cache.tables.begin(), cache.tables.end(), rng());
  return cache;
}

// A layer's bf16 key or value pool with token i of `values` ([tokens, KV * head_dim]) at position
// positions[i] of slot slots[i]; unwritten positions hold NaN.
std::vector<uint16_t> paged_pool(const std::vector<float>& values, const std::vector<int32_t>& slots,
                                 const std::vector<int32_t>& positions, const PagedCache& cache) {
  const cuda::PagedKvLayout& layout = cache.layout;
  const int64_t width = static_cast<int64_t>(layout.num_kv_heads) * layout.head_dim;
  std::vector<uint16_t> pool(static_cast<int64_t>(cache.num_blocks) * layout.block_size * width, 0xffff);
  const std::vector<uint16_t> bf16 = to_bf16(values);
  for (size_t i = 0; i < slots.size(); ++i) {
    const int block = cache.tables[static_cast<int64_t>(slots[i]) * layout.max_blocks_per_slot + positions[i] / layout.block_size];
    const int64_t row = static_cast<int64_t>(block) * layout.block_size + positions[i] % layout.block_size;
    std::copy_n(bf16.begin() + static_cast<int64_t>(i) * width, width, pool.begin() + row * width);
  }
  return pool;
}

// Random keys and values ([rows, KV * head_dim]) for positions 0..lengths[s]-1 of every slot s, slot by
// slot, bf16-rounded as the cache holds them, and the paged pools on the device; later positions are NaN.
struct CachedSequences {
  std::vector<float> keys, values;
  std::vector<int64_t> slot_first;  // the row of each slot's position 0
  DeviceBuffer tables, key_pool, value_pool;
};

CachedSequences cached_sequences(const PagedCache& cache, const std::vector<int>& lengths) {
  std::vector<int32_t> slots, positions;
  CachedSequences out;
  for (size_t s = 0; s < lengths.size(); ++s) {
    out.slot_first.push_back(static_cast<int64_t>(slots.size()));
    for (int p = 0; p < lengths[s]; ++p) {
      slots.push_back(static_cast<int32_t>(s));
      positions.push_back(p);
    }
  }
  const int64_t width = static_cast<int64_t>(cache.layout.num_kv_heads) * cache.layout.head_dim;
  const std::vector<float> keys = random_floats(static_cast<int64_t>(slots.size()) * width);
  const std::vector<float> values = random_floats(static_cast<int64_t>(slots.size()) * width);
  out.keys = bf16_rounded(keys);
  out.values = bf16_rounded(values);
  out.tables = upload(cache.tables);
  out.key_pool = upload(paged_pool(keys, slots, positions, cache));
  out.value_pool = upload(paged_pool(values, slots, positions, cache));
  return out;
}

TEST(GpuOps, PagedAttentionMatchesCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  struct Case {
    int heads, kv_heads, head_dim;
  };
  const Case cases[] = {{3, 1, 24}, {6, 2, 64}, {24, 4, 256}, {12, 1, 16}, {16, 4, 256}};
  const std::vector<int> lengths = {1, 37, 300};
  int64_t checked = 0;
  for (const Case& c : cases) {
    const int slots = static_cast<int>(lengths.size());
    const PagedCache cache = paged_cache(slots, 300, c.kv_heads, c.head_dim);
    const int64_t kv_width = static_cast<int64_t>(c.kv_heads) * c.head_dim, q_width = static_cast<int64_t>(c.heads) * c.head_dim;

    const CachedSequences sequences = cached_sequences(cache, lengths);

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
    std::vector<float> ref(queries * q_width);
    const cpu::AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
    for (int64_t i = 0; i < queries; ++i) {
      const int64_t first = sequences.slot_first[q_slots[i]];
      cpu::attend_one_token(query.data() + i * q_width, sequences.keys.data() + first * kv_width,
                            sequences.values.data() + first * kv_width, q_positions[i], shape, ref.data() + i * q_width);
    }
    // The gate of head h sits at gates[t * 2 q_width + h * 2 head_dim + head_dim] (q_proj's layout).
    const int64_t gate_stride = 2 * q_width, gate_head_stride = 2 * c.head_dim, out_stride = q_width + 8;
    const std::vector<float> gates = random_floats(queries * gate_stride, 3.0f);
    std::vector<float> gated_ref(ref.size());
    for (int64_t i = 0; i < queries; ++i) {
      for (int64_t col = 0; col < q_width; ++col) {
        const float gate = gates[i * gate_stride + col / c.head_dim * gate_head_stride + c.head_dim + col % c.head_dim];
        gated_ref[i * q_width + col] = ref[i * q_width + col] * cpu::sigmoid(gate);
      }
    }
    DeviceBuffer d_query = upload(query), d_qs = upload(q_slots), d_qp = upload(q_positions), d_gates = upload(gates);
    for (int splits : {1, 3, 32}) {
      for (const bool gated : {false, true}) {
        DeviceBuffer workspace = poisoned<float>(cuda::attention_workspace_floats(queries, c.heads, c.head_dim, splits));
        DeviceBuffer d_out = poisoned<uint16_t>(queries * out_stride);
        const cuda::AttentionOutput output{gated ? d_gates.as<float>() + c.head_dim : nullptr, gate_stride,
                                           gate_head_stride, d_out.data(), out_stride};
        sync_and_check(cuda::launch_attention_decode(d_query.as<float>(), d_qs.as<int32_t>(), d_qp.as<int32_t>(),
                                                     queries, c.heads, sequences.tables.as<int32_t>(), cache.layout, sequences.key_pool.data(),
                                                     sequences.value_pool.data(), splits, workspace.as<float>(), output, nullptr));
        const std::vector<float> out = from_bf16(d_out.download<uint16_t>());
        std::vector<float> got;
        for (int64_t i = 0; i < queries; ++i) got.insert(got.end(), out.begin() + i * out_stride, out.begin() + i * out_stride + q_width);
        checked += expect_close(got, gated ? gated_ref : ref, kTolerance,
                                "heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " head_dim " +
                                    std::to_string(c.head_dim) + " splits " + std::to_string(splits) +
                                    (gated ? " gated" : ""));
      }
    }
  }
  EXPECT_GT(checked, 0);
}

// The prefill kernel rounds queries and softmax weights to bf16 for the tensor cores; the reference gets
// the same bf16 queries, so what differs is the weights' rounding (relative 2^-9 each, averaged over the
// keys), fp32 sums in another order and the output's bf16 rounding. Measured on the H200 (2026-12-03):
// 2.5e-3 to 3.2e-3 of the largest output over these eight cases; 5e-3 leaves room for other random
// draws, while a wrong mask, scale or tile boundary is off by O(1).
constexpr double kPrefillTolerance = 5e-3;

TEST(GpuOps, PrefillAttentionMatchesCpu) {
  ASSERT_NO_FATAL_FAILURE(require_gpu());
  struct Case {
    int heads, kv_heads, head_dim;
  };
  const Case cases[] = {{6, 2, 64}, {16, 4, 128}, {24, 4, 256}, {4, 4, 64}};
  // Chunks (slot, start, length): a prompt of 150 from position 0 (tiles of 64, 64, 22), 100 tokens
  // after a cached prefix of 37, one token after 299 cached (a decode row in a mixed step), exactly 64.
  struct Chunk {
    int slot, start, length;
  };
  const std::vector<Chunk> step_chunks = {{0, 0, 150}, {2, 37, 100}, {1, 299, 1}, {3, 0, 64}};
  int64_t checked = 0;
  for (const Case& c : cases) {
    ASSERT_TRUE(cuda::attention_prefill_supports(c.head_dim));
    const int slots = 4;
    const PagedCache cache = paged_cache(slots, 320, c.kv_heads, c.head_dim);
    const int64_t kv_width = static_cast<int64_t>(c.kv_heads) * c.head_dim, q_width = static_cast<int64_t>(c.heads) * c.head_dim;

    // Keys and values of every cached position up to each chunk's end.
    std::vector<int> cached_lengths(slots, 0);
    for (const Chunk& chunk : step_chunks) cached_lengths[chunk.slot] = chunk.start + chunk.length;
    const CachedSequences sequences = cached_sequences(cache, cached_lengths);

    std::vector<int32_t> first, length, slot, start;
    int64_t tokens = 0;
    for (const Chunk& chunk : step_chunks) {
      first.push_back(static_cast<int32_t>(tokens));
      length.push_back(chunk.length);
      slot.push_back(chunk.slot);
      start.push_back(chunk.start);
      tokens += chunk.length;
    }
    const std::vector<float> query = bf16_rounded(random_floats(tokens * q_width));
    const cpu::AttentionShape shape{c.heads, c.kv_heads, c.head_dim};
    const int64_t gate_stride = 2 * q_width, gate_head_stride = 2 * c.head_dim, out_stride = q_width + 8;
    const std::vector<float> gates = random_floats(tokens * gate_stride, 3.0f);
    std::vector<float> ref(tokens * q_width), gated_ref(tokens * q_width);
    for (size_t k = 0; k < step_chunks.size(); ++k) {
      const int64_t row0 = sequences.slot_first[step_chunks[k].slot];
      for (int i = 0; i < step_chunks[k].length; ++i) {
        const int64_t t = first[k] + i;
        cpu::attend_one_token(query.data() + t * q_width, sequences.keys.data() + row0 * kv_width,
                              sequences.values.data() + row0 * kv_width, step_chunks[k].start + i, shape,
                              ref.data() + t * q_width);
      }
    }
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t col = 0; col < q_width; ++col) {
        const float gate = gates[t * gate_stride + col / c.head_dim * gate_head_stride + c.head_dim + col % c.head_dim];
        gated_ref[t * q_width + col] = ref[t * q_width + col] * cpu::sigmoid(gate);
      }
    }
    DeviceBuffer d_query = upload(query), d_gates = upload(gates);
    DeviceBuffer d_first = upload(first), d_length = upload(length), d_slot = upload(slot), d_start = upload(start);
    const cuda::DeviceChunks chunks{d_first.as<int32_t>(), d_length.as<int32_t>(), d_slot.as<int32_t>(),
                                    d_start.as<int32_t>(), static_cast<int>(step_chunks.size())};
    for (const cuda::PrefillAttentionKernel kernel : {cuda::PrefillAttentionKernel::MmaSync, cuda::PrefillAttentionKernel::Wgmma}) {
      if (!cuda::prefill_attention_kernel_runs(kernel, c.head_dim)) continue;
      for (const bool gated : {false, true}) {
        DeviceBuffer d_out = poisoned<uint16_t>(tokens * out_stride);
        const cuda::AttentionOutput output{gated ? d_gates.as<float>() + c.head_dim : nullptr, gate_stride,
                                           gate_head_stride, d_out.data(), out_stride};
        sync_and_check(cuda::launch_attention_prefill(kernel, d_query.as<float>(), tokens, chunks, c.heads,
                                                      sequences.tables.as<int32_t>(), cache.layout,
                                                      sequences.key_pool.data(), sequences.value_pool.data(), output,
                                                      nullptr));
        const std::vector<float> out = from_bf16(d_out.download<uint16_t>());
        std::vector<float> got;
        for (int64_t t = 0; t < tokens; ++t) got.insert(got.end(), out.begin() + t * out_stride, out.begin() + t * out_stride + q_width);
        const std::string label = std::string("prefill (") + cuda::prefill_attention_kernel_name(kernel) + ") heads " +
                                  std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " head_dim " +
                                  std::to_string(c.head_dim) + (gated ? " gated" : "");
        std::printf("%s: max|got-ref|/max|ref| = %.3g\n", label.c_str(), max_relative_error(got, gated ? gated_ref : ref));
        checked += expect_close(got, gated ? gated_ref : ref, kPrefillTolerance, label);
      }
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
