#include "ops/cuda/attention_prefill.h"
#include "ops/cuda/attention_prefill.cuh"
#include "ops/cuda/device_capability.h"

namespace uberlm::cuda {

namespace {

using namespace prefill_attention;

constexpr int kWarps = 4;
constexpr int kQueryRows = 16 * kWarps;  // a block's query tile: 16 rows (one mma m) per warp
constexpr int kKeys = 32;                // positions per key/value tile: 4 mma n-tiles of S, 2 mma k-steps of P V

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

// Element offsets in PrefillTile's padded rows: head dims d of row r (queries), vector c of key r (keys, values).
template <int kHeadDim>
struct PaddedRows {
  __device__ int operator()(int r, int d) const { return r * PrefillTile<kHeadDim>::kStride + d; }
};
template <int kHeadDim>
struct PaddedVectors {
  __device__ int operator()(int r, int c) const { return r * PrefillTile<kHeadDim>::kStride + c * 8; }
};

// Keys and values of positions [key0, key0 + kKeys) into one stage: keys first, values after them.
template <int kHeadDim>
__device__ __forceinline__ void request_tile(const int32_t* block_tables, const PagedKvLayout& layout, int slot,
                                             int kv_head, int key0, int last, const __nv_bfloat16* key_cache,
                                             const __nv_bfloat16* value_cache, __nv_bfloat16* stage) {
  request_key_value_tile<kHeadDim, kKeys, kWarps * 32>(block_tables, layout, slot, kv_head, key0, last, key_cache,
                                                       value_cache, stage,
                                                       stage + kKeys * PrefillTile<kHeadDim>::kStride,
                                                       PaddedVectors<kHeadDim>{});
}

// S = Q K^T for the warp's rows and one key tile (raw: scale_and_mask_scores follows). Per 16 head dims: the
// warp's Q fragment in one ldmatrix, the K fragments of two 8-key n-tiles in each further one.
template <int kHeadDim>
__device__ __forceinline__ void tile_scores(const __nv_bfloat16* q_rows, const __nv_bfloat16* keys,
                                            float (&s)[kKeys / 8][4]) {
  constexpr int kStride = PrefillTile<kHeadDim>::kStride;
  const int lane = threadIdx.x % 32, matrix = lane / 8;
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
}

// O += P V for one key tile: P from the score fragments (weights_as_a_fragments), V through ldmatrix.trans.
template <int kHeadDim>
__device__ __forceinline__ void accumulate_values(WarpRows<kHeadDim>& rows, const float (&p)[kKeys / 8][4],
                                                  const __nv_bfloat16* values) {
  constexpr int kStride = PrefillTile<kHeadDim>::kStride;
  const int lane = threadIdx.x % 32;
  uint32_t a[kKeys / 16][4];
  weights_as_a_fragments(p, a);
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    const __nv_bfloat16* v_row = values + (kk * 16 + (lane / 8 % 2) * 8 + lane % 8) * kStride + (lane / 16) * 8;
#pragma unroll
    for (int n = 0; n < kHeadDim / 16; ++n) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, v_row + n * 16);
      mma_bf16_m16n8k16(rows.out[2 * n], a[kk], b[0], b[1]);
      mma_bf16_m16n8k16(rows.out[2 * n + 1], a[kk], b[2], b[3]);
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
  QueryTile q_tile;
  if (!find_query_tile(chunks, kQueryRows, num_heads, layout.num_kv_heads, q_tile)) return;
  const int warp = threadIdx.x / 32;
  const int warp_row0 = 16 * warp;
  const int warp_last = q_tile.position0 + min(warp_row0 + 15, q_tile.rows - 1);
  const bool warp_has_rows = warp_row0 < q_tile.rows;

  request_tile<kHeadDim>(block_tables, layout, q_tile.slot, q_tile.kv_head, 0, q_tile.last, key_cache, value_cache,
                         stages);
  WarpRows<kHeadDim> rows;
  start_rows(rows, warp_row0, q_tile.rows, q_tile.position0);
  load_query_tile<kHeadDim, kQueryRows>(query, q_tile.token0, q_tile.rows, num_heads, q_tile.head, q_rows,
                                        PaddedRows<kHeadDim>{});
  const float scale_log2 = rsqrtf(static_cast<float>(kHeadDim)) * kLog2e;
  for (int key0 = 0, tile = 0; key0 <= q_tile.last; key0 += kKeys, ++tile) {
    // The next tile streams in while this one is used; its stage was last read before the previous
    // iteration's closing barrier.
    const bool next = key0 + kKeys <= q_tile.last;
    if (next) {
      request_tile<kHeadDim>(block_tables, layout, q_tile.slot, q_tile.kv_head, key0 + kKeys, q_tile.last, key_cache,
                             value_cache, stages + ((tile + 1) % kStages) * Tile::kKeyValueElements);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // this tile's keys and values (and, the first time, the queries) are in shared memory
    if (warp_has_rows && key0 <= warp_last) {
      const __nv_bfloat16* keys = stages + (tile % kStages) * Tile::kKeyValueElements;
      float s[kKeys / 8][4];
      tile_scores<kHeadDim>(q_rows + warp_row0 * Tile::kStride, keys, s);
      scale_and_mask_scores(s, key0, rows.position, scale_log2);
      online_softmax(rows, s);
      accumulate_values<kHeadDim>(rows, s, keys + kKeys * Tile::kStride);
    }
    __syncthreads();  // every warp is done with this stage before it is loaded again
  }
  if (warp_has_rows) store_rows<kHeadDim>(rows, q_tile.token0, warp_row0, q_tile.rows, q_tile.head, out);
}

template <int kHeadDim>
struct MmaSyncInstance {
  CompiledPrefillAttention operator()() const {
    return {attention_prefill_kernel<kHeadDim>, kQueryRows, kWarps * 32, PrefillTile<kHeadDim>::kSharedBytes};
  }
};

// Which kernel of the two runs `head_dim` (entry == nullptr: that kernel is not compiled for it).
CompiledPrefillAttention compiled(PrefillAttentionKernel kernel, int head_dim) {
  return kernel == PrefillAttentionKernel::Wgmma ? wgmma_prefill_attention(head_dim)
                                                 : mma_sync_prefill_attention(head_dim);
}

}  // namespace

namespace prefill_attention {

CompiledPrefillAttention mma_sync_prefill_attention(int head_dim) {
  return compiled_instance<MmaSyncInstance, 64, 128, 256>(head_dim);
}

}  // namespace prefill_attention

bool attention_prefill_supports(int head_dim) {
  return compiled(PrefillAttentionKernel::MmaSync, head_dim).entry != nullptr;
}

const char* prefill_attention_kernel_name(PrefillAttentionKernel kernel) {
  return kernel == PrefillAttentionKernel::Wgmma ? "wgmma" : "mma.sync";
}

bool prefill_attention_kernel_runs(PrefillAttentionKernel kernel, int head_dim) {
  if (compiled(kernel, head_dim).entry == nullptr) return false;
  return kernel == PrefillAttentionKernel::MmaSync || current_device_is_sm90();
}

PrefillAttentionKernel prefill_attention_kernel_for(int head_dim) {
  return prefill_attention_kernel_runs(PrefillAttentionKernel::Wgmma, head_dim) ? PrefillAttentionKernel::Wgmma
                                                                                 : PrefillAttentionKernel::MmaSync;
}

cudaError_t launch_attention_prefill(PrefillAttentionKernel kernel, const float* query, int64_t num_tokens,
                                     const DeviceChunks& chunks, int num_heads, const int32_t* block_tables,
                                     const PagedKvLayout& layout, const void* key_cache, const void* value_cache,
                                     const AttentionOutput& out, cudaStream_t stream) {
  if (num_tokens == 0) return cudaSuccess;
  if (num_heads % layout.num_kv_heads != 0 || chunks.count < 1) return cudaErrorInvalidValue;
  const CompiledPrefillAttention instance = compiled(kernel, layout.head_dim);
  if (instance.entry == nullptr) return cudaErrorInvalidValue;
  const cudaError_t allowed = allow_dynamic_shared_memory(instance.entry, instance.shared_bytes);
  if (allowed != cudaSuccess) return allowed;
  const int64_t tiles = num_tokens / instance.query_rows + chunks.count;
  if (tiles > 65535) return cudaErrorInvalidValue;  // the grid's y limit
  const dim3 grid(static_cast<unsigned>(num_heads), static_cast<unsigned>(tiles));
  return launch_dependent(instance.entry, grid, dim3(instance.threads), instance.shared_bytes, stream, query, chunks,
                          num_heads, block_tables, layout, static_cast<const __nv_bfloat16*>(key_cache),
                          static_cast<const __nv_bfloat16*>(value_cache), out);
}

}  // namespace uberlm::cuda
