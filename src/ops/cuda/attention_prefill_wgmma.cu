// The prefill attention on Hopper's warpgroup MMA (sm_90a): the tile order, softmax, masking and store of the
// mma.sync kernel (attention_prefill.cuh), on 128-query tiles of two warpgroups that share 64-key tiles. Each
// warpgroup computes S = Q K^T (its 64 rows x 64 keys) and O += P V (64 rows x head_dim) by wgmma: Q and K from
// shared memory, P from registers, V from shared memory read N-major (no transpose). One wgmma of P V covers
// the whole head dim where mma.sync needed head_dim / 8 instructions and as many ldmatrix.trans. The warpgroups
// meet at two block barriers a tile (they share the stages and both copy), so their softmaxes and products
// mostly run in step; what would let them alternate is in bench/notes/prefill.md.
#include "ops/cuda/attention_prefill.h"
#include "ops/cuda/attention_prefill.cuh"
#include "ops/cuda/wgmma.cuh"

namespace uberlm::cuda {

namespace {

using namespace prefill_attention;

constexpr int kWarpgroups = 2;                     // each 64 query rows (one wgmma m); they share the key tiles
constexpr int kThreads = kWarpgroups * 128;
constexpr int kQueryRows = 64 * kWarpgroups;       // a block's query tile
constexpr int kKeys = 64;                          // positions per key/value tile: S is m64n64, P V four k-steps
constexpr int kKeyTiles = kKeys / 8;               // 8-key n-tiles of S

// Shared memory: each warpgroup's 64 query rows, then per stage the key tile and the value tile, each as
// head_dim / 64 panels of 64-element rows in the 128-byte swizzle (wgmma.cuh), a panel after the other. Panels
// start on 1024-byte boundaries (the swizzle's repeating pattern): the dynamic shared memory is aligned up to
// one first.
template <int kHeadDim>
struct WgmmaTile {
  static constexpr int kPanels = kHeadDim / 64;
  static constexpr uint32_t kQueryPanelBytes = 64 * 128;
  static constexpr uint32_t kKeyPanelBytes = kKeys * 128;
  static constexpr uint32_t kGroupQueryBytes = kPanels * kQueryPanelBytes;  // one warpgroup's rows
  static constexpr uint32_t kKeyBytes = kPanels * kKeyPanelBytes;            // also the value tile's
  static constexpr uint32_t kStageBytes = 2 * kKeyBytes;
  static constexpr size_t kSharedBytes = kWarpgroups * kGroupQueryBytes + kStages * kStageBytes + 1024;
};

// Element offset of head dim d of row r in a tile of panels `kPanelBytes` apart (r < kPanelBytes / 128).
template <uint32_t kPanelBytes>
__device__ __forceinline__ int swizzled_element(int r, int d) {
  return static_cast<int>((d / 64) * (kPanelBytes / 2) + smem_swizzled_offset(r, d % 64) / 2);
}
// Query row r of the block goes to warpgroup r / 64's rows.
template <int kHeadDim>
struct SwizzledQueryRows {
  __device__ int operator()(int r, int d) const {
    using Tile = WgmmaTile<kHeadDim>;
    const int group_start = static_cast<int>((r / 64) * (Tile::kGroupQueryBytes / 2));
    return group_start + swizzled_element<Tile::kQueryPanelBytes>(r % 64, d);
  }
};
template <int kHeadDim>
struct SwizzledKeyVectors {
  __device__ int operator()(int r, int c) const {
    return swizzled_element<WgmmaTile<kHeadDim>::kKeyPanelBytes>(r, 8 * c);
  }
};

// S = Q K^T (raw) for a warpgroup's rows, 16 head dims a step: both operands K-major, rows 128 bytes apart in
// 8-row groups of 1024.
template <int kHeadDim>
__device__ __forceinline__ void tile_scores(const unsigned char* queries, const unsigned char* keys,
                                            float (&s)[kKeyTiles][4]) {
  using Tile = WgmmaTile<kHeadDim>;
  float(&d)[kKeys / 2] = reinterpret_cast<float(&)[kKeys / 2]>(s);
  wgmma_fence();
#pragma unroll
  for (int step = 0; step < kHeadDim / 16; ++step) {
    const uint32_t column_bytes = (step % 4) * 32;  // 16 bf16 within the panel's 128-byte rows
    const uint64_t a = wgmma_descriptor(queries + (step / 4) * Tile::kQueryPanelBytes + column_bytes, 16, 1024);
    const uint64_t b = wgmma_descriptor(keys + (step / 4) * Tile::kKeyPanelBytes + column_bytes, 16, 1024);
    wgmma_m64n64k16_ss(d, a, b, step > 0);
  }
  wgmma_commit();
  wgmma_wait<0>();
}

// O += P V, 16 keys a step: V N-major (head dims along N, panels kKeyPanelBytes apart; 8-key groups 1024 apart).
template <int kHeadDim>
__device__ __forceinline__ void accumulate_values(WarpRows<kHeadDim>& rows, const float (&p)[kKeyTiles][4],
                                                  const unsigned char* values) {
  using Tile = WgmmaTile<kHeadDim>;
  uint32_t a[kKeyTiles / 2][4];
  weights_as_a_fragments(p, a);
  float(&o)[kHeadDim / 2] = reinterpret_cast<float(&)[kHeadDim / 2]>(rows.out);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < kKeyTiles / 2; ++kk) {
    const uint64_t b = wgmma_descriptor(values + kk * 16 * 128, Tile::kKeyPanelBytes, 1024);
    if constexpr (kHeadDim == 256) {
      wgmma_m64n256k16_rs_n_major_b(o, a[kk], b);
    } else {
      wgmma_m64n128k16_rs_n_major_b(o, a[kk], b);
    }
  }
  wgmma_commit();
  wgmma_wait<0>();
}

// Grid (query heads, 128-row tiles upper bound), tiles in find_query_tile's order; two warpgroups a block, one
// block an SM. A warpgroup skips the key tiles after its last row's position (the causal diagonal) and the
// tiles of a block whose rows it has none of, but still meets the block's barriers.
template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 1) attention_prefill_wgmma_kernel(
    const float* query, DeviceChunks chunks, int num_heads, const int32_t* block_tables, PagedKvLayout layout,
    const __nv_bfloat16* key_cache, const __nv_bfloat16* value_cache, AttentionOutput out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Tile = WgmmaTile<kHeadDim>;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  unsigned char* queries = shared_bytes + ((1024 - __cvta_generic_to_shared(shared_bytes) % 1024) % 1024);
  unsigned char* stages = queries + kWarpgroups * Tile::kGroupQueryBytes;
  begin_dependent_kernel();
  QueryTile q_tile;
  if (!find_query_tile(chunks, kQueryRows, num_heads, layout.num_kv_heads, q_tile)) return;
  const int warp = threadIdx.x / 32, group = warp / 4;
  const int warp_row0 = 16 * warp, group_row0 = 64 * group;
  const bool group_has_rows = group_row0 < q_tile.rows;
  const int group_last = q_tile.position0 + min(group_row0 + 63, q_tile.rows - 1);
  const unsigned char* group_queries = queries + group * Tile::kGroupQueryBytes;
  const auto request = [&](int key0, unsigned char* stage) {
    request_key_value_tile<kHeadDim, kKeys, kThreads>(block_tables, layout, q_tile.slot, q_tile.kv_head, key0,
                                                      q_tile.last, key_cache, value_cache,
                                                      reinterpret_cast<__nv_bfloat16*>(stage),
                                                      reinterpret_cast<__nv_bfloat16*>(stage + Tile::kKeyBytes),
                                                      SwizzledKeyVectors<kHeadDim>{});
  };

  request(0, stages);
  WarpRows<kHeadDim> rows;
  start_rows(rows, warp_row0, q_tile.rows, q_tile.position0);
  load_query_tile<kHeadDim, kQueryRows>(query, q_tile.token0, q_tile.rows, num_heads, q_tile.head,
                                        reinterpret_cast<__nv_bfloat16*>(queries), SwizzledQueryRows<kHeadDim>{});
  const float scale_log2 = rsqrtf(static_cast<float>(kHeadDim)) * kLog2e;
  for (int key0 = 0, tile = 0; key0 <= q_tile.last; key0 += kKeys, ++tile) {
    const bool next = key0 + kKeys <= q_tile.last;
    if (next) {
      request(key0 + kKeys, stages + ((tile + 1) % kStages) * Tile::kStageBytes);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    fence_shared_for_wgmma();
    __syncthreads();  // this tile's keys and values (and, the first time, the queries) are in shared memory
    if (group_has_rows && key0 <= group_last) {
      const unsigned char* keys = stages + (tile % kStages) * Tile::kStageBytes;
      float s[kKeyTiles][4];
      tile_scores<kHeadDim>(group_queries, keys, s);
      scale_and_mask_scores(s, key0, rows.position, scale_log2);
      online_softmax(rows, s);
      accumulate_values<kHeadDim>(rows, s, keys + Tile::kKeyBytes);
    }
    __syncthreads();  // every warp is done with this stage before it is loaded again
  }
  if (warp_row0 < q_tile.rows) store_rows<kHeadDim>(rows, q_tile.token0, warp_row0, q_tile.rows, q_tile.head, out);
#else
  __trap();  // only built for sm_90a; prefill_attention_kernel_runs keeps other devices off it
#endif
}

template <int kHeadDim>
struct WgmmaInstance {
  CompiledPrefillAttention operator()() const {
    return {attention_prefill_wgmma_kernel<kHeadDim>, kQueryRows, kThreads, WgmmaTile<kHeadDim>::kSharedBytes};
  }
};

}  // namespace

namespace prefill_attention {

CompiledPrefillAttention wgmma_prefill_attention(int head_dim) {
  return compiled_instance<WgmmaInstance, 128, 256>(head_dim);
}

}  // namespace prefill_attention

}  // namespace uberlm::cuda
