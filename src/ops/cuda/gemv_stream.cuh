#pragma once
// The bulk-stream pipeline of the NVFP4 decode GEMV (M <= 16, Hopper): each block streams its rows'
// weights through a deep ring of shared-memory stages filled by the tensor-copy engine (TMA boxes with
// mbarrier completion), so the bytes in flight per SM are set by the ring (8-12 stages of 4.6 KB), not
// by registers or the grid shape. That is what the register and cp.async pipelines of gemv_tile.cuh
// lacked on the H200: 5-6 warps per SM with ~12 KB in flight, where the copy bandwidth at the loaded
// latency needs ~32 KB (bench/notes/gemv.md, sessions 4 and 6).
//
// Work split. A tile is 16 weight rows (two parts, gate and up, with the paired SwiGLU epilogue). A
// cluster of `cluster` blocks owns tiles cluster_id, + clusters, ...; block rank r of the cluster streams
// the stages [r S / cluster, (r + 1) S / cluster) of each of them (S: 512-wide stages of K), so every block
// of the grid streams the same bytes whatever N is (a 320-tile matrix on 132 SMs would otherwise leave
// a fifth of them idle in the last wave). In a block one producer thread issues each stage as three
// box copies per part (two 128-byte-wide halves of the 16 rows' codes, and their scales): one copy per
// row and part (the first version) left the kernel bound by the copy engine's per-request cost, at 17-31%
// of the copy bandwidth (bench/notes/gemv.md, session 7). Stage i is multiplied by consumer warp
// i % warps with the mma fragments of gemv_tile.cuh (gemv_multiply_chunk), read from shared memory. At the end of a
// tile the consumer warps add their sums in warp order, the other ranks send theirs to rank 0 through
// distributed shared memory (st.shared::cluster, mbarriers at cluster scope), and rank 0 adds them in
// rank order and runs the epilogue: a fixed order, so the output is deterministic.
//
// Requirements (gemv.cpp checks them): K a multiple of 256 (the rows of scales, K/16 bytes, are then a
// multiple of 16 bytes, as a copy descriptor needs), codes and scales 16-byte aligned, M <= 16.
#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/async_copy.cuh"
#include "ops/cuda/gemv.h"
#include "ops/cuda/gemv_nvfp4.cuh"
#include "ops/cuda/gemv_tile.cuh"

namespace uberlm::cuda {

inline constexpr int kStreamStageK = 512;
inline constexpr int kStreamStageChunks = kStreamStageK / kGemvChunkK;
inline constexpr int kStreamMaxTokenGroups = static_cast<int>(kGemvStreamMaxM / kGemvTokensPerGroup);
// A stage's codes arrive as two boxes of 16 rows x 128 bytes, 128-byte swizzled (tensor_map.h); its
// scales as one box of 16 rows x 32 bytes.
inline constexpr int kStreamHalfBytes = 128;
inline constexpr int kStreamScaleBytes = kStreamStageK / 16;
// Tile sums in flight from the other ranks of a cluster to rank 0.
inline constexpr int kStreamInboxSlots = 2;

// The copy descriptors of a launch's weights: codes (boxes of 16 rows x 128 bytes, swizzled) and scales
// (16 rows x 32 bytes) of each segment.
struct GemvStreamMaps {
  CUtensorMap codes[kGemvMaxSegments];
  CUtensorMap scales[kGemvMaxSegments];
};

// The byte of a stage's codes at (line, byte) of a 128-byte-swizzled half: 16-byte chunk c of box line r
// sits at chunk c ^ (r % 8).
__device__ __forceinline__ int swizzled_128b(int line, int byte) {
  return line * kStreamHalfBytes + (byte ^ ((line % 8) << 4));
}

// The box line (tile row) whose codes fragment row g of a warp's mma reads. A shared-memory wavefront of
// an lds.128 is fragment rows g, g + 1 reading the same 64 bytes of their lines; lines 8 apart in the
// swizzle pattern's period would collide, so g, g + 1 take lines whose swizzles differ in bit 2 (0 and 4,
// 1 and 5, ...), which puts their chunks in opposite halves of the bank row.
__device__ __forceinline__ int stream_fragment_line(int g) { return (g >> 1) | ((g & 1) << 2); }

// Fixed part of a block's shared memory; the per-warp tile sums and the cluster inbox follow it. Each
// swizzled box of codes (2 KB) needs 1024-byte alignment, so the stages' codes and scales are apart.
template <int kParts, int kDepth>
struct GemvStreamShared {
  alignas(1024) uint8_t codes[kDepth][kParts][2][kGemvRowsPerTile * kStreamHalfBytes];
  uint8_t scales[kDepth][kParts][kGemvRowsPerTile][kStreamScaleBytes];
  uint64_t stage_full[kDepth], stage_empty[kDepth];
  uint64_t inbox_full[kStreamInboxSlots], inbox_free[kStreamInboxSlots];
};

// Floats of one tile's sums: parts x 16 rows x tokens.
template <int kTokenGroups, int kParts>
inline constexpr int kStreamTileValues = kParts * kGemvRowsPerTile * kTokenGroups * kGemvTokensPerGroup;

template <int kTokenGroups, int kParts, int kDepth>
constexpr int gemv_stream_smem_bytes(int warps, int cluster) {
  constexpr int kValueBytes = kStreamTileValues<kTokenGroups, kParts> * static_cast<int>(sizeof(float));
  return static_cast<int>(sizeof(GemvStreamShared<kParts, kDepth>)) + 2 * warps * kValueBytes +
         kStreamInboxSlots * (cluster - 1) * kValueBytes;
}

// What one launch streams (set by the host).
struct GemvStreamWork {
  int tiles;     // 16-row tiles over all segments (with paired parts: of one part)
  int k_stages;  // kStreamStageK-wide stages of K
  int cluster;   // blocks per cluster, splitting each tile's stages
  int warps;     // consumer warps per block
};

// A tile's rows: part p is rows [row0, row0 + 16) of segment `segment` (plain) or of segment p (paired).
struct GemvStreamTile {
  int segment;
  int64_t row0;
};

template <bool kPaired>
__device__ __forceinline__ GemvStreamTile gemv_stream_tile(const GemvSegments<Nvfp4Format>& segments, int tile) {
  if constexpr (kPaired) {
    return {0, static_cast<int64_t>(tile) * kGemvRowsPerTile};
  } else {
    int segment = 0;
    while (segment + 1 < segments.count && tile >= segments.first_block[segment + 1]) ++segment;
    return {segment, static_cast<int64_t>(tile - segments.first_block[segment]) * kGemvRowsPerTile};
  }
}

// A tile's sums for the epilogue (GemvBlockSums' interface, one row group): the block's consumer warps
// added in warp order, then the other ranks' block sums in rank order.
template <int kTokenGroups, int kParts>
struct GemvStreamTileSums {
  static constexpr int kRows = kParts * kGemvRowsPerTile, kValues = kStreamTileValues<kTokenGroups, kParts>;
  const float* warp_sums;
  int warps;
  const float* rank_sums;
  int ranks;

  __device__ __forceinline__ int row_groups() const { return 1; }

  __device__ __forceinline__ float block_sum(int i) const {
    float sum = 0.0f;
    for (int w = 0; w < warps; ++w) sum += warp_sums[w * kValues + i];
    return sum;
  }

  __device__ __forceinline__ float operator()(int /*group*/, int token, int r) const {
    const int i = token * kRows + r;
    float sum = block_sum(i);
    for (int q = 0; q < ranks; ++q) sum += rank_sums[q * kValues + i];
    return sum;
  }
};

// The producer (one thread): every stage of this block's tiles, in the order the consumers take them.
// Rows past N and k-values past K arrive as zeros, which nothing reads into an output.
template <int kParts, int kDepth, bool kPaired>
__device__ __forceinline__ void gemv_stream_produce(const GemvSegments<Nvfp4Format>& segments,
                                                    const GemvStreamMaps& maps, const GemvStreamWork& work,
                                                    int first_tile, int tile_step, int stage_begin, int stage_end,
                                                    GemvStreamShared<kParts, kDepth>& shared) {
  constexpr uint32_t kStageBytes = kParts * kGemvRowsPerTile * (2 * kStreamHalfBytes + kStreamScaleBytes);
  int seq = 0;
  for (int tile = first_tile; tile < work.tiles; tile += tile_step) {
    const GemvStreamTile t = gemv_stream_tile<kPaired>(segments, tile);
    const int row0 = static_cast<int>(t.row0);
    for (int s = stage_begin; s < stage_end; ++s, ++seq) {
      const int slot = seq % kDepth;
      mbarrier_wait<false>(&shared.stage_empty[slot], ((seq / kDepth) & 1) ^ 1);
      uint64_t* const full = &shared.stage_full[slot];
      mbarrier_arrive_expect_bytes(full, kStageBytes);
      const int code_x = s * (kStreamStageK / 2), scale_x = s * kStreamScaleBytes;
#pragma unroll
      for (int p = 0; p < kParts; ++p) {
        const int segment = kPaired ? p : t.segment;
        tensor_copy_to_shared(shared.codes[slot][p][0], maps.codes[segment], code_x, row0, full);
        tensor_copy_to_shared(shared.codes[slot][p][1], maps.codes[segment], code_x + kStreamHalfBytes, row0, full);
        tensor_copy_to_shared(shared.scales[slot][p], maps.scales[segment], scale_x, row0, full);
      }
    }
  }
}

// One consumer warp's multiply of stage `slot`: chunk c's activations are requested before chunk c - 1
// is multiplied (the first before the stage's weights are waited for), the weights come from the stage.
// Fragment row g reads box line stream_fragment_line(g) (+ 8 for the mma's second row half).
template <int kTokenGroups, int kParts, int kDepth, int kChains>
__device__ __forceinline__ void gemv_stream_multiply_stage(const GemvStreamShared<kParts, kDepth>& shared, int slot,
                                                           uint32_t parity, const __nv_bfloat16* x, int m,
                                                           int k_size, int k0,
                                                           GemvAccumulators<kTokenGroups, kParts, kChains>& acc) {
  const int lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4, line = stream_fragment_line(g);
  const int chunks = min(kStreamStageChunks, (k_size - k0) / kGemvChunkK);
  uint32_t xs[2][kTokenGroups][16];
  gemv_load_activation_chunk<kTokenGroups>(x, m, k_size, k0 + tig * kGemvLaneK, xs[0]);
  mbarrier_wait<false>(&shared.stage_full[slot], parity);
#pragma unroll
  for (int c = 0; c < kStreamStageChunks; ++c) {
    if (c >= chunks) break;  // warp-uniform
    if (c + 1 < chunks) {
      gemv_load_activation_chunk<kTokenGroups>(x, m, k_size, k0 + (c + 1) * kGemvChunkK + tig * kGemvLaneK,
                                               xs[(c + 1) % 2]);
    }
    constexpr int kChunkBytes = kGemvChunkK / 2;  // a chunk is half of a 128-byte line
    const int half = c / 2, byte = (c % 2) * kChunkBytes + tig * (kGemvLaneK / 2);
    GemvChunkRows<Nvfp4Format, kParts> raw;
#pragma unroll
    for (int p = 0; p < kParts; ++p) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = line + 8 * h;
        raw.rows[p][h].codes = *reinterpret_cast<const uint4*>(&shared.codes[slot][p][half][swizzled_128b(row, byte)]);
        raw.rows[p][h].scales = *reinterpret_cast<const uint16_t*>(
            &shared.scales[slot][p][row][c * (kGemvChunkK / 16) + tig * 2]);
      }
    }
    gemv_multiply_chunk<Nvfp4Format, kTokenGroups, kParts>(raw, xs[c % 2], acc);
  }
}

template <int kTokenGroups, int kParts, int kDepth, class Epilogue>
__global__ void __launch_bounds__((kGemvStreamMaxWarps + 1) * 32)
    gemv_stream_kernel(const GemvSegments<Nvfp4Format> segments, const __grid_constant__ GemvStreamMaps maps,
                       const __nv_bfloat16* __restrict__ x, int m, int k_size, const GemvStreamWork work,
                       const Epilogue epilogue) {
  static_assert(kParts == (Epilogue::kPairedTiles ? 2 : 1));
  constexpr int kValues = kStreamTileValues<kTokenGroups, kParts>;
  using Shared = GemvStreamShared<kParts, kDepth>;
  extern __shared__ __align__(1024) uint8_t gemv_stream_smem[];
  Shared& shared = *reinterpret_cast<Shared*>(gemv_stream_smem);
  float* const warp_sums = reinterpret_cast<float*>(gemv_stream_smem + sizeof(Shared));  // [2][warps][kValues]
  float* const inbox = warp_sums + 2 * work.warps * kValues;  // [kStreamInboxSlots][cluster - 1][kValues]
  allow_next_kernel();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, consumer_threads = work.warps * 32;
  const int rank = static_cast<int>(blockIdx.x) % work.cluster, cluster_id = static_cast<int>(blockIdx.x) / work.cluster;
  const int clusters = static_cast<int>(gridDim.x) / work.cluster;
  const int stage_begin = rank * work.k_stages / work.cluster, stage_end = (rank + 1) * work.k_stages / work.cluster;
  const bool clustered = work.cluster > 1;
  if (threadIdx.x == 0) {
    if (shared_address(gemv_stream_smem) % 1024 != 0) __trap();  // the swizzled boxes would land misplaced
    for (int d = 0; d < kDepth; ++d) {
      mbarrier_init(&shared.stage_full[d], 1);
      mbarrier_init(&shared.stage_empty[d], 1);  // the one warp that multiplies the stage frees it
    }
    for (int j = 0; j < kStreamInboxSlots && clustered; ++j) {
      mbarrier_init(&shared.inbox_full[j], (work.cluster - 1) * consumer_threads);
      mbarrier_init(&shared.inbox_free[j], consumer_threads);
    }
    fence_mbarrier_init();
  }
  if (clustered) cluster_sync();  // the barriers exist before any block of the cluster uses them
  else __syncthreads();

  if (warp == work.warps) {
    if (lane == 0) {
      gemv_stream_produce<kParts, kDepth, Epilogue::kPairedTiles>(segments, maps, work, cluster_id, clusters,
                                                                  stage_begin, stage_end, shared);
    }
    __syncwarp();
  } else {
    wait_for_previous_kernel();  // the activations come from the previous kernel, the outputs may be read by it
    int seq = 0, iteration = 0;
    for (int tile = cluster_id; tile < work.tiles; tile += clusters, ++iteration) {
      GemvAccumulators<kTokenGroups, kParts> acc = {};
      for (int s = stage_begin; s < stage_end; ++s, ++seq) {
        if (seq % work.warps != warp) continue;
        const int slot = seq % kDepth;
        gemv_stream_multiply_stage<kTokenGroups, kParts, kDepth>(shared, slot, (seq / kDepth) & 1, x, m, k_size,
                                                                 s * kStreamStageK, acc);
        __syncwarp();
        if (lane == 0) mbarrier_arrive(&shared.stage_empty[slot]);
      }
      // Two sets of warp sums: a warp may start writing the next tile's while others still read these.
      float* const sums = warp_sums + (iteration & 1) * work.warps * kValues;
      gemv_store_warp_sums<kTokenGroups, kParts>(acc, stream_fragment_line(lane / 4), sums + warp * kValues);
      consumer_sync(consumer_threads);
      const int slot = iteration % kStreamInboxSlots;
      const uint32_t parity = (iteration / kStreamInboxSlots) & 1;
      float* const slot_inbox = inbox + slot * (work.cluster - 1) * kValues;
      const GemvStreamTileSums<kTokenGroups, kParts> tile_sums{sums, work.warps, slot_inbox, work.cluster - 1};
      if (rank != 0) {
        mbarrier_wait<true>(&shared.inbox_free[slot], parity ^ 1);  // rank 0 has read this slot's last tile
        for (int i = threadIdx.x; i < kValues; i += consumer_threads) {
          store_in_block(slot_inbox + (rank - 1) * kValues + i, 0, tile_sums.block_sum(i));
        }
        mbarrier_arrive_in_block(&shared.inbox_full[slot], 0);
      } else {
        if (clustered) mbarrier_wait<true>(&shared.inbox_full[slot], parity);
        const GemvStreamTile t = gemv_stream_tile<Epilogue::kPairedTiles>(segments, tile);
        epilogue.template store<Nvfp4Format, kTokenGroups, kParts>(tile_sums, segments, t.segment, t.row0, m,
                                                                   threadIdx.x, consumer_threads);
        for (int q = 1; q < work.cluster; ++q) mbarrier_arrive_in_block(&shared.inbox_free[slot], q);
      }
    }
  }
  if (clustered) cluster_sync();  // no block leaves while another may still write to its shared memory
}

}  // namespace uberlm::cuda
