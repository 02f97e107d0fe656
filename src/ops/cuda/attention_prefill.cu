#include <cuda_pipeline.h>

#include <cfloat>

#include "ops/cuda/attention_prefill.h"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/kv_cache.cuh"
#include "ops/cuda/mma.cuh"

namespace uberlm::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kQueryRows = 16 * kWarps;  // a block's query tile: 16 rows (one mma m) per warp
constexpr int kKeys = 32;                // positions per key/value tile: 4 mma n-tiles of S, 2 mma k-steps of P V
constexpr float kLog2e = 1.4426950408889634f;

constexpr int kStages = 2;               // key/value tiles in shared memory: the next loads while one is used

// Shared-memory rows are head_dim + 8 bf16 wide: consecutive rows then start 4 banks apart, so the eight
// rows a fragment load touches hit distinct banks, and every row stays 16-byte aligned for ldmatrix.
// Layout: the query tile, then per stage the key tile and the value tile.
template <int kHeadDim>
struct PrefillTile {
  static constexpr int kStride = kHeadDim + 8;
  static constexpr int kKeyValueElements = 2 * kKeys * kStride;  // one stage
  static constexpr size_t kSharedBytes =
      (static_cast<size_t>(kQueryRows) * kStride + static_cast<size_t>(kStages) * kKeyValueElements) * 2;
};

// Which chunk and which of its 64-row tiles block `block` runs; false for blocks past the last tile (the
// grid is sized by an upper bound that depends only on the step's shape). Blocks take the tiles last to
// first: a causal tile's work grows with its position, and the GPU starts blocks in index order, so the
// longest tiles start first and the short ones fill the last wave instead of leaving SMs idle behind it.
__device__ bool find_query_tile(int block, const DeviceChunks& chunks, int& chunk, int& row0) {
  int total = 0;
  for (int c = 0; c < chunks.count; ++c) total += (chunks.length[c] + kQueryRows - 1) / kQueryRows;
  if (block >= total) return false;
  int tile = total - 1 - block;
  for (int c = 0; c < chunks.count; ++c) {
    const int tiles = (chunks.length[c] + kQueryRows - 1) / kQueryRows;
    if (tile < tiles) {
      chunk = c;
      row0 = tile * kQueryRows;
      return true;
    }
    tile -= tiles;
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

// S = Q K^T for the warp's rows and one key tile, scaled to log2 units, causally masked. Per 16 head dims:
// the warp's Q fragment in one ldmatrix, the K fragments of two 8-key n-tiles in each further one.
template <int kHeadDim>
__device__ __forceinline__ void tile_scores(const __nv_bfloat16* q_rows, const __nv_bfloat16* keys, int key0,
                                            const int (&position)[2], float scale_log2, float (&s)[kKeys / 8][4]) {
  constexpr int kStride = PrefillTile<kHeadDim>::kStride;
  const int lane = threadIdx.x % 32, tig = lane % 4, matrix = lane / 8;
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) s[j][e] = 0.0f;
  }
  // This lane's ldmatrix row: of Q, row lane % 8 (+ 8 for matrices 1, 3), head dims + 8 for matrices 2, 3; of
  // K, key lane % 8 (+ 8 for matrices 2, 3: the second n-tile), head dims + 8 for matrices 1, 3.
  const __nv_bfloat16* q = q_rows + (lane % 8 + 8 * (matrix % 2)) * kStride + 8 * (matrix / 2);
  const __nv_bfloat16* k = keys + (lane % 8 + 8 * (matrix / 2)) * kStride + 8 * (matrix % 2);
#pragma unroll 4
  for (int kk = 0; kk < kHeadDim / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, q + kk * 16);
#pragma unroll
    for (int j = 0; j < kKeys / 8; j += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, k + 8 * j * kStride + kk * 16);
      mma_bf16_m16n8k16(s[j], a, b[0], b[1]);
      mma_bf16_m16n8k16(s[j + 1], a, b[2], b[3]);
    }
  }
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = key0 + 8 * j + 2 * tig + (e & 1);
      s[j][e] = key <= position[e / 2] ? s[j][e] * scale_log2 : -INFINITY;
    }
  }
}

// Folds one tile's scores into the running max and sum, rescales the output, and turns s into the
// softmax weights exp2(s - max).
template <int kHeadDim>
__device__ __forceinline__ void online_softmax(WarpRows<kHeadDim>& rows, float (&s)[kKeys / 8][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) tile_max = fmaxf(tile_max, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(rows.max[r], tile_max);
    // A row with every key so far masked keeps max -inf: exponents then use 0, giving weights 0, not NaN.
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float correction = exp2f(rows.max[r] - base);
    float tile_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      s[j][2 * r] = exp2f(s[j][2 * r] - base);
      s[j][2 * r + 1] = exp2f(s[j][2 * r + 1] - base);
      tile_sum += s[j][2 * r] + s[j][2 * r + 1];
    }
    rows.sum[r] = rows.sum[r] * correction + tile_sum;
    rows.max[r] = new_max;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      rows.out[n][2 * r] *= correction;
      rows.out[n][2 * r + 1] *= correction;
    }
  }
}

// O += P V for one key tile: P from the score fragments (the m16n8 accumulator layout of two adjacent
// key n-tiles is the A layout of one k-step), V through ldmatrix.trans.
template <int kHeadDim>
__device__ __forceinline__ void accumulate_values(WarpRows<kHeadDim>& rows, const float (&p)[kKeys / 8][4],
                                                  const __nv_bfloat16* values) {
  constexpr int kStride = PrefillTile<kHeadDim>::kStride;
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    const uint32_t a[4] = {pack_bf16x2(p[2 * kk][0], p[2 * kk][1]), pack_bf16x2(p[2 * kk][2], p[2 * kk][3]),
                           pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    const __nv_bfloat16* v_row = values + (kk * 16 + (lane / 8 % 2) * 8 + lane % 8) * kStride + (lane / 16) * 8;
#pragma unroll
    for (int n = 0; n < kHeadDim / 16; ++n) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_row + n * 16);
      mma_bf16_m16n8k16(rows.out[2 * n], a, b[0], b[1]);
      mma_bf16_m16n8k16(rows.out[2 * n + 1], a, b[2], b[3]);
    }
  }
}

// Requests the keys and values of positions [key0, key0 + kKeys) into one stage of shared memory (cp.async,
// committed as one group); positions past `last` (not necessarily written yet) become zeros, whose
// weights the mask makes 0.
template <int kHeadDim>
__device__ __forceinline__ void request_key_value_tile(const int32_t* block_tables, const PagedKvLayout& layout,
                                                       int slot, int kv_head, int key0, int last,
                                                       const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache,
                                                       __nv_bfloat16* stage) {
  constexpr int kStride = PrefillTile<kHeadDim>::kStride, kVectors = kHeadDim / 8;
  __nv_bfloat16* keys = stage;
  __nv_bfloat16* values = stage + kKeys * kStride;
  for (int i = threadIdx.x; i < kKeys * kVectors; i += blockDim.x) {
    const int r = i / kVectors, c = i % kVectors, position = key0 + r;
    const bool present = position <= last;
    const int64_t offset = present ? kv_offset(block_tables, layout, slot, position, kv_head) + c * 8 : 0;
    const size_t zeros = present ? 0 : 16;  // bytes zero-filled instead of copied
    __pipeline_memcpy_async(keys + r * kStride + c * 8, key_cache + offset, 16, zeros);
    __pipeline_memcpy_async(values + r * kStride + c * 8, value_cache + offset, 16, zeros);
  }
  __pipeline_commit();
}

// The tile's queries as bf16 into shared memory; rows past the chunk are zeros.
template <int kHeadDim>
__device__ __forceinline__ void load_query_tile(const float* query, int64_t token0, int rows, int num_heads, int head,
                                                __nv_bfloat16* q_rows) {
  constexpr int kStride = PrefillTile<kHeadDim>::kStride, kVectors = kHeadDim / 4;
  for (int i = threadIdx.x; i < kQueryRows * kVectors; i += blockDim.x) {
    const int r = i / kVectors, d = (i % kVectors) * 4;
    float4 q = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < rows) q = *reinterpret_cast<const float4*>(query + ((token0 + r) * num_heads + head) * kHeadDim + d);
    uint32_t* out = reinterpret_cast<uint32_t*>(q_rows + r * kStride + d);
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

// Grid (query heads, query tiles upper bound): every head's tile of one place starts before any tile of
// the next (find_query_tile's order); 4 warps of 16 query rows each; key/value tiles double buffered.
template <int kHeadDim>
__global__ void __launch_bounds__(kWarps * 32) attention_prefill_kernel(
    const float* query, DeviceChunks chunks, int num_heads, const int32_t* block_tables, PagedKvLayout layout,
    const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache, AttentionOutput out) {
  using Tile = PrefillTile<kHeadDim>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  __nv_bfloat16* q_rows = reinterpret_cast<__nv_bfloat16*>(shared_bytes);
  __nv_bfloat16* stages = q_rows + kQueryRows * Tile::kStride;
  begin_dependent_kernel();
  int chunk = 0, row0 = 0;
  if (!find_query_tile(static_cast<int>(blockIdx.y), chunks, chunk, row0)) return;
  const int head = blockIdx.x, kv_head = head / (num_heads / layout.num_kv_heads);
  const int64_t token0 = chunks.first[chunk] + row0;
  const int slot = chunks.slot[chunk], tile_rows = min(kQueryRows, chunks.length[chunk] - row0);
  const int position0 = chunks.start[chunk] + row0, last = position0 + tile_rows - 1;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4;
  const int warp_row0 = 16 * warp;
  const int warp_last = position0 + min(warp_row0 + 15, tile_rows - 1);
  const bool warp_has_rows = warp_row0 < tile_rows;

  request_key_value_tile<kHeadDim>(block_tables, layout, slot, kv_head, 0, last, key_cache, value_cache, stages);
  WarpRows<kHeadDim> rows;
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
  load_query_tile<kHeadDim>(query, token0, tile_rows, num_heads, head, q_rows);
  const float scale_log2 = rsqrtf(static_cast<float>(kHeadDim)) * kLog2e;
  for (int key0 = 0, tile = 0; key0 <= last; key0 += kKeys, ++tile) {
    // The next tile streams in while this one is used; its stage was last read before the previous
    // iteration's closing barrier.
    const bool next = key0 + kKeys <= last;
    if (next) {
      request_key_value_tile<kHeadDim>(block_tables, layout, slot, kv_head, key0 + kKeys, last, key_cache,
                                       value_cache, stages + ((tile + 1) % kStages) * Tile::kKeyValueElements);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // this tile's keys and values (and, the first time, the queries) are in shared memory
    if (warp_has_rows && key0 <= warp_last) {
      const __nv_bfloat16* keys = stages + (tile % kStages) * Tile::kKeyValueElements;
      float s[kKeys / 8][4];
      tile_scores<kHeadDim>(q_rows + warp_row0 * Tile::kStride, keys, key0, rows.position, scale_log2, s);
      online_softmax<kHeadDim>(rows, s);
      accumulate_values<kHeadDim>(rows, s, keys + kKeys * Tile::kStride);
    }
    __syncthreads();  // every warp is done with this stage before it is loaded again
  }
  if (warp_has_rows) store_rows<kHeadDim>(rows, token0, warp_row0, tile_rows, head, out);
}

template <int kHeadDim>
cudaError_t launch_for_head_dim(const float* query, int64_t num_tokens, const DeviceChunks& chunks, int num_heads,
                                const int32_t* block_tables, const PagedKvLayout& layout, const void* key_cache,
                                const void* value_cache, const AttentionOutput& out, cudaStream_t stream) {
  constexpr size_t kShared = PrefillTile<kHeadDim>::kSharedBytes;
  const cudaError_t allowed = allow_dynamic_shared_memory(attention_prefill_kernel<kHeadDim>, kShared);
  if (allowed != cudaSuccess) return allowed;
  const int64_t tiles = num_tokens / kQueryRows + chunks.count;
  if (tiles > 65535) return cudaErrorInvalidValue;  // the grid's y limit: 4M tokens in one step
  const dim3 grid(static_cast<unsigned>(num_heads), static_cast<unsigned>(tiles));
  return launch_dependent(attention_prefill_kernel<kHeadDim>, grid, kWarps * 32, kShared, stream, query, chunks,
                          num_heads, block_tables, layout, static_cast<const __nv_bfloat16*>(key_cache),
                          static_cast<const __nv_bfloat16*>(value_cache), out);
}

}  // namespace

bool attention_prefill_supports(int head_dim) { return head_dim == 64 || head_dim == 128 || head_dim == 256; }

cudaError_t launch_attention_prefill(const float* query, int64_t num_tokens, const DeviceChunks& chunks,
                                     int num_heads, const int32_t* block_tables, const PagedKvLayout& layout,
                                     const void* key_cache, const void* value_cache, const AttentionOutput& out,
                                     cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (num_heads % layout.num_kv_heads != 0 || chunks.count < 1) return cudaErrorInvalidValue;
  switch (layout.head_dim) {
    case 64:
      return launch_for_head_dim<64>(query, num_tokens, chunks, num_heads, block_tables, layout, key_cache,
                                     value_cache, out, stream);
    case 128:
      return launch_for_head_dim<128>(query, num_tokens, chunks, num_heads, block_tables, layout, key_cache,
                                      value_cache, out, stream);
    case 256:
      return launch_for_head_dim<256>(query, num_tokens, chunks, num_heads, block_tables, layout, key_cache,
                                      value_cache, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace uberlm::cuda
