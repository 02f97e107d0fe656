#pragma once
// What the two prefill attention kernels share (attention_prefill.cu on mma.sync, attention_prefill_wgmma.cu on
// Hopper's wgmma): the tile order, a warp's online-softmax state in the m16n8 accumulator layout (which both
// instructions' accumulators have), the mask, the softmax, the staging of keys, values and queries (each kernel
// names its shared-memory layout), and the gated store.
#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include <cfloat>
#include <cstdint>

#include "ops/cuda/attention_decode.h"
#include "ops/cuda/device_chunks.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/kv_cache.cuh"
#include "ops/cuda/mma.cuh"

namespace uberlm::cuda::prefill_attention {

constexpr int kStages = 2;  // key/value tiles in shared memory: the next loads while one is used
constexpr float kLog2e = 1.4426950408889634f;

// A block's query tile: `rows` consecutive prompt rows of one chunk, for query head `head`.
struct QueryTile {
  int head, kv_head;
  int slot;             // the chunk's sequence slot
  int rows;             // query_rows, fewer at a chunk's end
  int position0, last;  // positions of its first and last rows
  int64_t token0;       // the step's row of its first row
};

// The tile this block runs (blockIdx.x: query head; blockIdx.y: the tile); false for blocks past the last tile
// (the grid is sized by an upper bound that depends only on the step's shape). Blocks take the tiles last to
// first: a causal tile's work grows with its position, and the GPU starts blocks in index order, so the
// longest tiles start first and the short ones fill the last wave instead of leaving SMs idle behind it.
__device__ inline bool find_query_tile(const DeviceChunks& chunks, int query_rows, int num_heads, int num_kv_heads,
                                       QueryTile& tile) {
  int total = 0;
  for (int c = 0; c < chunks.count; ++c) total += (chunks.length[c] + query_rows - 1) / query_rows;
  const int block = static_cast<int>(blockIdx.y);
  if (block >= total) return false;
  int index = total - 1 - block;
  for (int c = 0; c < chunks.count; ++c) {
    const int tiles = (chunks.length[c] + query_rows - 1) / query_rows;
    if (index < tiles) {
      const int row0 = index * query_rows;
      tile.head = static_cast<int>(blockIdx.x);
      tile.kv_head = tile.head / (num_heads / num_kv_heads);
      tile.slot = chunks.slot[c];
      tile.rows = min(query_rows, chunks.length[c] - row0);
      tile.position0 = chunks.start[c] + row0;
      tile.last = tile.position0 + tile.rows - 1;
      tile.token0 = chunks.first[c] + row0;
      return true;
    }
    index -= tiles;
  }
  return false;
}

// One warp's 16 query rows: the online-softmax state and the unnormalised output. A lane holds rows g
// (index 0) and g + 8 (index 1) and, of each 8-wide column tile, columns 2 tig and 2 tig + 1.
template <int kHeadDim>
struct WarpRows {
  float out[kHeadDim / 8][4];
  float max[2];  // running max of the log2-scaled scores
  float sum[2];  // this lane's part of the running softmax denominator
  int position[2];  // the rows' positions; -1 for rows past the tile (every key masked)
};

// A warp's rows before the first key tile: no keys seen, rows past the tile marked (position -1).
template <int kHeadDim>
__device__ __forceinline__ void start_rows(WarpRows<kHeadDim>& rows, int warp_row0, int tile_rows, int position0) {
  const int g = threadIdx.x % 32 / 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    rows.max[r] = -INFINITY;
    rows.sum[r] = 0.0f;
    const int row = warp_row0 + g + 8 * r;
    rows.position[r] = row < tile_rows ? position0 + row : -1;
  }
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) rows.out[n][e] = 0.0f;
  }
}

// A tile's raw scores (the m16n8 accumulator layout of its four 8-key n-tiles) scaled to log2 units, the keys
// after each row's position masked to -inf.
template <int kKeyTiles>
__device__ __forceinline__ void scale_and_mask_scores(float (&s)[kKeyTiles][4], int key0, const int (&position)[2],
                                                      float scale_log2) {
  const int tig = threadIdx.x % 4, last_key = key0 + 8 * kKeyTiles - 1;
  if (last_key <= position[0] && last_key <= position[1]) {  // below the diagonal: nothing to mask
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] *= scale_log2;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kKeyTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * j + 2 * tig + (e & 1);
      s[j][e] = key <= position[e / 2] ? s[j][e] * scale_log2 : -INFINITY;
    }
  }
}

// The A fragments of P V's two k-steps from the softmax weights: the accumulator layout of two adjacent key
// n-tiles is the A layout of one 16-key step.
template <int kKeyTiles>
__device__ __forceinline__ void weights_as_a_fragments(const float (&p)[kKeyTiles][4],
                                                       uint32_t (&a)[kKeyTiles / 2][4]) {
#pragma unroll
  for (int kk = 0; kk < kKeyTiles / 2; ++kk) {
    a[kk][0] = pack_bf16x2(p[2 * kk][0], p[2 * kk][1]);
    a[kk][1] = pack_bf16x2(p[2 * kk][2], p[2 * kk][3]);
    a[kk][2] = pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
    a[kk][3] = pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
  }
}

// Folds one tile's scores into the running max and sum, rescales the output, and turns s into the
// softmax weights exp2(s - max).
template <int kHeadDim, int kKeyTiles>
__device__ __forceinline__ void online_softmax(WarpRows<kHeadDim>& rows, float (&s)[kKeyTiles][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(rows.max[r], tile_max);
    // A row with every key so far masked keeps max -inf: exponents then use 0, giving weights 0, not NaN.
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = exp2f(rows.max[r] - base);
    float tile_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kKeyTiles; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - base);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
      tile_sum += s[j][2 * r] + s[j][2 * r + 1];
    }
    rows.sum[r] = rows.sum[r] * correction + tile_sum;
    rows.max[r] = new_max;
    // Once a row's max settles (most tiles of a long prompt) its correction is exactly 1: skip the multiplies.
    if (__any_sync(0xffffffffu, correction != 1.0f)) {
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        rows.out[n][2 * r] *= correction;
        rows.out[n][2 * r + 1] *= correction;
      }
    }
  }
}

// Requests the keys and values of positions [key0, key0 + kTileKeys) into one stage of shared memory (cp.async,
// committed as one group); positions past `last` (not necessarily written yet) become zeros, whose
// weights the mask makes 0.
// `offset(r, c)`: where vector c (head dims 8c..8c+7) of key r goes in the key tile and the value tile, in elements.
// A block of kThreads copies the tile in passes of kThreads / kVectors rows; thread t always takes vector
// t % kVectors. The lanes of a warp share a few rows per pass, so each row's place in the paged caches (a block
// table read and a division) is found once, by one lane, and passed to the others.
template <int kHeadDim, int kTileKeys, int kThreads, class TileOffset>
__device__ __forceinline__ void request_key_value_tile(const int32_t* block_tables, const PagedKvLayout& layout,
                                                       int slot, int kv_head, int key0, int last,
                                                       const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache,
                                                       __nv_bfloat16* keys, __nv_bfloat16* values, TileOffset offset) {
  constexpr int kVectors = kHeadDim / 8;          // 16-byte vectors a key row
  constexpr int kRowsPerWarp = 32 / kVectors;     // rows a warp takes in one pass
  constexpr int kRowsPerPass = kThreads / kVectors;
  constexpr int kPasses = kTileKeys / kRowsPerPass;
  static_assert(32 % kVectors == 0 && kTileKeys % kRowsPerPass == 0 && kPasses * kRowsPerWarp <= 32);
  const int lane = threadIdx.x % 32, c = threadIdx.x % kVectors;
  const int warp_row0 = threadIdx.x / 32 * kRowsPerWarp;
  // Lane j finds the start of row warp_row0 + j % kRowsPerWarp of pass j / kRowsPerWarp (-1: past `last`).
  int64_t row_start = -1;
  if (lane < kPasses * kRowsPerWarp) {
    const int position = key0 + warp_row0 + lane % kRowsPerWarp + lane / kRowsPerWarp * kRowsPerPass;
    if (position <= last) row_start = kv_offset(block_tables, layout, slot, position, kv_head);
  }
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int q = lane / kVectors, r = warp_row0 + q + pass * kRowsPerPass;
    const int64_t start = __shfl_sync(0xffffffffu, row_start, pass * kRowsPerWarp + q);
    const bool present = start >= 0;
    const int64_t source = present ? start + c * 8 : 0;
    const size_t zeros = present ? 0 : 16;  // bytes zero-filled instead of copied
    const int destination = offset(r, c);
    __pipeline_memcpy_async(keys + destination, key_cache + source, 16, zeros);
    __pipeline_memcpy_async(values + destination, value_cache + source, 16, zeros);
  }
  __pipeline_commit();
}

// The tile's queries as bf16 into shared memory; rows past the chunk are zeros. `offset(r, d)`: where head dims
// d..d+3 of row r go, in elements (d a multiple of 4).
template <int kHeadDim, int kTileRows, class TileOffset>
__device__ __forceinline__ void load_query_tile(const float* query, int64_t token0, int rows, int num_heads, int head,
                                                __nv_bfloat16* q_rows, TileOffset offset) {
  constexpr int kVectors = kHeadDim / 4;
  for (int i = threadIdx.x; i < kTileRows * kVectors; i += blockDim.x) {
    const int r = i / kVectors, d = (i % kVectors) * 4;
    float4 q = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < rows) q = *reinterpret_cast<const float4*>(query + ((token0 + r) * num_heads + head) * kHeadDim + d);
    uint32_t* out = reinterpret_cast<uint32_t*>(q_rows + offset(r, d));
    out[0] = pack_bf16x2(q.x, q.y);
    out[1] = pack_bf16x2(q.z, q.w);
  }
}

template <int kHeadDim>
__device__ __forceinline__ void store_rows(const WarpRows<kHeadDim>& rows, int64_t token0, int warp_row0, int tile_rows,
                                           int head, const AttentionOutput& out) {
  const int lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float sum = rows.sum[r];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = warp_row0 + g + 8 * r;
    if (row >= tile_rows) continue;
    const int64_t t = token0 + row;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      const int d = 8 * n + 2 * tig;
      float v0 = rows.out[n][2 * r] / sum, v1 = rows.out[n][2 * r + 1] / sum;
      if (out.gate) {
        const float* gate = out.gate + t * out.gate_stride + head * out.gate_head_stride + d;
        v0 *= sigmoidf_exact(gate[0]);
        v1 *= sigmoidf_exact(gate[1]);
      }
      *reinterpret_cast<uint32_t*>(static_cast<__nv_bfloat16*>(out.out) + t * out.out_stride + head * kHeadDim + d) =
          pack_bf16x2(v0, v1);
    }
  }
}

// Both kernels' parameters. Grid (query heads, an upper bound of query tiles that depends only on the step's
// shape, so a captured graph replays for any split of it).
using PrefillAttentionEntry = void (*)(const float* query, DeviceChunks chunks, int num_heads,
                                       const int32_t* block_tables, PagedKvLayout layout,
                                       const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache,
                                       AttentionOutput out);

// One kernel's instance for one head dim, as its file compiled it: what a launch needs. A head dim the kernel
// is not compiled for has entry == nullptr; this is the only record of which head dims each kernel runs.
struct CompiledPrefillAttention {
  PrefillAttentionEntry entry = nullptr;
  int query_rows = 0;  // rows of a block's query tile
  int threads = 0;
  size_t shared_bytes = 0;
};

// The instance of `head_dim` among a kernel's compiled head dims (Instance<kHeadDim>{}() makes one), or none.
template <template <int> class Instance, int... kHeadDims>
CompiledPrefillAttention compiled_instance(int head_dim) {
  CompiledPrefillAttention found;
  ((found = head_dim == kHeadDims ? Instance<kHeadDims>{}() : found), ...);
  return found;
}

CompiledPrefillAttention mma_sync_prefill_attention(int head_dim);  // attention_prefill.cu
CompiledPrefillAttention wgmma_prefill_attention(int head_dim);     // attention_prefill_wgmma.cu

}  // namespace uberlm::cuda::prefill_attention
