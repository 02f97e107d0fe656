#pragma once
// Building blocks of the small-M GEMM y[M, N] = x[M, K] . W^T (M <= 64, decode), shared by the NVFP4
// and bf16 weight formats and meant to be called from fused decode kernels too: load a weight chunk
// (Format::load), dequantise it one mma fragment at a time (Format::mma_operands), multiply it into the
// accumulators
// (gemv_multiply_chunk), stream a warp's share of K through a register pipeline (gemv_warp_partial),
// reduce a block's warps (gemv_block_partials, GemvBlockSums) and hand the sums to an epilogue
// (GemvStoreEpilogue, GemvSwigluEpilogue).
//
// Work split: the tensor-core op mma.m16n8k16 (bf16 in, fp32 accumulate) takes A = 16 weight rows x 16
// k and B = 16 k x 8 tokens, so at M <= 8 only half of each op is padding (weights as B would waste
// 15/16 at M = 1). A warp owns kRowTiles tiles of 16 weight rows; lane (g = lane / 4, tig = lane % 4)
// streams rows g and g + 8 of each tile, k-values [32 tig, 32 tig + 32) of every 128-wide k-chunk: one
// 16-byte load per row for NVFP4 (four for bf16), coalesced across the four lanes of a row. Those 32
// k-values feed 8 mma ops. Which k sits in which mma slot does not matter for a dot product as long as
// A and B agree: the slots take natural k order, the activations as loaded, and NVFP4 codes are tiled at
// load (nvfp4_gemv_layout.h) so that they unpack into that order cheaply. Each dequantised weight fragment is reused for every token group of 8, so the
// weights are read from memory once whatever M is.
//
// A format provides:
//   struct Row; Row row(r)                                 where row r starts (pointers, computed once)
//   struct Chunk;                                          raw weight bytes of one lane, one row, one chunk
//   static Chunk load(const Row&, int k)                   16-byte loads of k-values [k, k + 32)
//   struct Prepared; Prepared prepare(const Chunk&)       per-chunk values the dequantisation reuses (scales)
//   void mma_operands(const Chunk&, const Prepared&, int j, uint32_t& lo, uint32_t& hi)
//                                                          bf16x2 words of the row for mma j: lo at k slots
//                                                          2tig, 2tig+1, hi at 2tig+8, 2tig+9
//   void activation_pairs(const uint32_t (&x)[16], int j, uint32_t& lo, uint32_t& hi)
//        the B-fragment pairs (k slots 2 tig and 2 tig + 8) of mma j from 32 bf16 activations
//   float output_multiplier                                applied to the fp32 sums
// and, for the asynchronous pipeline (gemv_warp_partial_async):
//   struct Stage;                                          one row's chunk for all 32 lanes in shared memory
//   static void stage_async(const Row&, int k, Stage&)     cp.async of this lane's part of the chunk
//   static Chunk unstage(const Row&, int k, const Stage&)  this lane's chunk back from shared memory
#include <cuda_bf16.h>

#include <cstdint>

#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/mma.cuh"

namespace uberlm::cuda {

inline constexpr int kGemvLaneK = 32;                  // k-values one lane streams per row per chunk
inline constexpr int kGemvChunkK = 4 * kGemvLaneK;     // k-values a row's four lanes cover per chunk
inline constexpr int kGemvRowsPerTile = 16;            // mma m
inline constexpr int kGemvTokensPerGroup = 8;          // mma n
inline constexpr int kGemvMaxTokens = 64;

// A 16-byte load that bypasses L1: weights are read once, and letting them stream through L1 would
// evict the activations, which every warp of the SM re-reads (measured: each chunk then waited for an
// L2 round trip, ~2000 cycles under load, whatever the pipeline depth).
__device__ __forceinline__ uint4 load_streaming_16(const void* address) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(address));
  return v;
}

__device__ __forceinline__ uint16_t load_streaming_2(const void* address) {
  uint16_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u16 %0, [%1];\n" : "=h"(v) : "l"(address));
  return v;
}

// cp.async of 16 bytes (bypassing L1: weights are read once) and of 4 bytes (the smallest 16-byte-less
// size, L1-allocating by the ISA's rule), completed by gemv_async_wait.
__device__ __forceinline__ void copy_async_16(void* shared, const void* global) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(shared))),
               "l"(global));
}

__device__ __forceinline__ void copy_async_4(void* shared, const void* global) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(shared))),
               "l"(global));
}

__device__ __forceinline__ void gemv_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most kPending of this thread's committed copy groups are still in flight.
template <int kPending>
__device__ __forceinline__ void gemv_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// 32 bf16 activations x[token, k .. k + 32) as 16 bf16x2 words; zeros when the token or k is out of range.
__device__ __forceinline__ void load_activations(const __nv_bfloat16* x, int k_size, int token, int m, int k,
                                                 uint32_t (&out)[16]) {
  if (token < m && k < k_size) {
    const uint4* src = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(token) * k_size + k);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint4 v = __ldg(src + i);
      out[4 * i] = v.x;
      out[4 * i + 1] = v.y;
      out[4 * i + 2] = v.z;
      out[4 * i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 16; ++i) out[i] = 0;
  }
}

// This lane's activations of one chunk for every token group: tokens 8t + g, k-values [k, k + 32).
template <int kTokenGroups>
__device__ __forceinline__ void gemv_load_activation_chunk(const __nv_bfloat16* x, int m, int k_size, int k,
                                                           uint32_t (&xs)[kTokenGroups][16]) {
  const int g = threadIdx.x % 32 / 4;
#pragma unroll
  for (int t = 0; t < kTokenGroups; ++t) load_activations(x, k_size, t * kGemvTokensPerGroup + g, m, k, xs[t]);
}

// Accumulator sets per (token group, row tile): with few of them, the 8 mma ops of a chunk alternate
// between two sets so that consecutive ops do not wait on each other's result (mma latency ~30 cycles).
template <int kTokenGroups, int kRowTiles>
inline constexpr int kGemvAccChains = kTokenGroups * kRowTiles <= 2 ? 2 : 1;

// A batch-invariant tuning (GemvTuning::batch_invariant) keeps one chain whatever M is, so that a token's
// sums are added in an order fixed by the tuning alone, never by how many tokens share the launch.
template <int kTokenGroups, int kRowTiles, bool kBatchInvariant>
inline constexpr int kGemvLaunchChains = kBatchInvariant ? 1 : kGemvAccChains<kTokenGroups, kRowTiles>;

template <int kTokenGroups, int kRowTiles, int kChains = kGemvAccChains<kTokenGroups, kRowTiles>>
using GemvAccumulators = float[kChains][kTokenGroups][kRowTiles][4];

// One lane's rows g and g + 8 of every row tile for one chunk.
template <class Format, int kRowTiles>
struct GemvChunkRows {
  typename Format::Chunk rows[kRowTiles][2];
};

// The rows one warp streams: row tile rt is rows [row0[rt], row0[rt] + 16) of the matrix formats[rt],
// which has n_rows rows (every tile's matrix has the same rows). A plain GEMV's tiles are consecutive
// rows of one matrix; paired tiles (GemvSwigluEpilogue) are the same rows of two matrices.
template <class Format, int kRowTiles>
struct GemvWarpTiles {
  Format formats[kRowTiles];
  int64_t row0[kRowTiles];
  int64_t n_rows;
};

// Where this lane's rows g and g + 8 of every row tile start. Rows past N are clamped to the last row:
// they are read (valid memory, finite values) but never stored.
template <class Format, int kRowTiles>
struct GemvLaneRows {
  typename Format::Row rows[kRowTiles][2];

  __device__ __forceinline__ explicit GemvLaneRows(const GemvWarpTiles<Format, kRowTiles>& tiles) {
    const int g = threadIdx.x % 32 / 4;
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = tiles.row0[rt] + h * 8 + g;
        rows[rt][h] = tiles.formats[rt].row(row < tiles.n_rows ? row : tiles.n_rows - 1);
      }
    }
  }

  // k-values [k, k + 32) of every row; k past K reads the rows' last 32 k-values instead, whose
  // activations load_activations makes zero, so they add nothing.
  __device__ __forceinline__ GemvChunkRows<Format, kRowTiles> load(int k, int k_last) const {
    const int k_read = k < k_last ? k : k_last;
    GemvChunkRows<Format, kRowTiles> out;
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) out.rows[rt][h] = Format::load(rows[rt][h], k_read);
    }
    return out;
  }
};

// acc += W[rows, chunk] . x[tokens, chunk]^T for one chunk already loaded into registers (weights: raw,
// activations: xs from gemv_load_activation_chunk). Each mma's weight fragment is dequantised just before
// the mma ops that use it, so only one fragment per row tile is live at a time (dequantising the whole
// chunk first held 64 more registers and halved the resident warps).
template <class Format, int kTokenGroups, int kRowTiles, int kChains>
__device__ __forceinline__ void gemv_multiply_chunk(const GemvChunkRows<Format, kRowTiles>& raw,
                                                    const uint32_t (&xs)[kTokenGroups][16],
                                                    GemvAccumulators<kTokenGroups, kRowTiles, kChains>& acc) {
  typename Format::Prepared prepared[kRowTiles][2];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) prepared[rt][h] = Format::prepare(raw.rows[rt][h]);
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    uint32_t b0[kTokenGroups], b1[kTokenGroups];
#pragma unroll
    for (int t = 0; t < kTokenGroups; ++t) Format::activation_pairs(xs[t], j, b0[t], b1[t]);
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
      uint32_t a[4];
      Format::mma_operands(raw.rows[rt][0], prepared[rt][0], j, a[0], a[2]);
      Format::mma_operands(raw.rows[rt][1], prepared[rt][1], j, a[1], a[3]);
#pragma unroll
      for (int t = 0; t < kTokenGroups; ++t) mma_bf16_m16n8k16(acc[j % kChains][t][rt], a, b0[t], b1[t]);
    }
  }
}

// With few token groups the activations of the next chunk are loaded while this one is multiplied
// (16 registers per token group); with more, they are loaded at the start of their own chunk.
template <int kTokenGroups>
inline constexpr bool kGemvPrefetchActivations = kTokenGroups <= 2;

// One warp's share of y: the rows of `tiles`, chunks first, first + stride, ... of K
// (int k: K < 2^31); the fp32 partial sums go to acc in the mma D layout. The weight loads run kDepth
// chunks ahead of the multiplies: a chunk's slot is refilled with the chunk kDepth later as soon as it
// has been read, so about kDepth loads per row stay in flight for the whole loop. Addresses are
// computed once per row; the loop only steps k.
template <class Format, int kTokenGroups, int kRowTiles, int kDepth, int kChains, class WaitForInputs>
__device__ __forceinline__ void gemv_warp_partial(const GemvWarpTiles<Format, kRowTiles>& tiles, const __nv_bfloat16* x,
                                                  int m, int k_size, int first_chunk, int chunk_stride,
                                                  GemvAccumulators<kTokenGroups, kRowTiles, kChains>& acc,
                                                  const WaitForInputs& wait_for_inputs) {
  constexpr bool kPrefetch = kGemvPrefetchActivations<kTokenGroups>;
  const int n_chunks = (k_size + kGemvChunkK - 1) / kGemvChunkK;
  const int count = first_chunk < n_chunks ? (n_chunks - first_chunk + chunk_stride - 1) / chunk_stride : 0;
  const int k_first = first_chunk * kGemvChunkK + (threadIdx.x % 4) * kGemvLaneK, k_step = chunk_stride * kGemvChunkK;
  const int k_last = k_size - kGemvLaneK;
  const GemvLaneRows<Format, kRowTiles> rows(tiles);
  GemvChunkRows<Format, kRowTiles> pipe[kDepth];
#pragma unroll
  for (int d = 0; d < kDepth; ++d) {
    if (d < count) pipe[d] = rows.load(k_first + d * k_step, k_last);
  }
  wait_for_inputs();  // the weights are constant; the activations come from the previous kernel (or task)
  uint32_t xs[kTokenGroups][16];
  if (kPrefetch && count > 0) gemv_load_activation_chunk<kTokenGroups>(x, m, k_size, k_first, xs);
  for (int base = 0; base < count; base += kDepth) {
#pragma unroll
    for (int d = 0; d < kDepth; ++d) {
      const int i = base + d, k = k_first + i * k_step;
      if (i >= count) break;  // warp-uniform
      const GemvChunkRows<Format, kRowTiles> current = pipe[d];
      if (i + kDepth < count) pipe[d] = rows.load(k + kDepth * k_step, k_last);
      uint32_t current_xs[kTokenGroups][16];
      if constexpr (kPrefetch) {
#pragma unroll
        for (int t = 0; t < kTokenGroups; ++t) {
#pragma unroll
          for (int e = 0; e < 16; ++e) current_xs[t][e] = xs[t][e];
        }
        if (i + 1 < count) gemv_load_activation_chunk<kTokenGroups>(x, m, k_size, k + k_step, xs);
      } else {
        gemv_load_activation_chunk<kTokenGroups>(x, m, k_size, k, current_xs);
      }
      gemv_multiply_chunk<Format, kTokenGroups, kRowTiles>(current, current_xs, acc);
    }
  }
}

// The asynchronous pipeline's shared memory of one warp: kDepth slots of every row this warp streams.
template <class Format, int kRowTiles, int kDepth>
struct GemvWarpStages {
  typename Format::Stage slots[kDepth][kRowTiles][2];
};

// As gemv_warp_partial, but the chunks in flight wait in shared memory (`stages`, this warp's own)
// instead of registers: cp.async copies run kDepth - 1 chunks ahead of the multiplies, each lane
// reading back only what it copied itself, so no barrier is needed. A slot is refilled only after the
// multiply that used its previous contents has issued. Activations are loaded at the start of their
// chunk (an L1 hit: every warp of the SM reads the same ones), not a chunk ahead: the prefetch's 16
// registers per token group cost more resident warps than its latency hiding gains.
template <class Format, int kTokenGroups, int kRowTiles, int kDepth, int kChains, class WaitForInputs>
__device__ __forceinline__ void gemv_warp_partial_async(const GemvWarpTiles<Format, kRowTiles>& tiles,
                                                        const __nv_bfloat16* x, int m, int k_size, int first_chunk,
                                                        int chunk_stride, GemvWarpStages<Format, kRowTiles, kDepth>& stages,
                                                        GemvAccumulators<kTokenGroups, kRowTiles, kChains>& acc,
                                                        const WaitForInputs& wait_for_inputs) {
  const int n_chunks = (k_size + kGemvChunkK - 1) / kGemvChunkK;
  const int count = first_chunk < n_chunks ? (n_chunks - first_chunk + chunk_stride - 1) / chunk_stride : 0;
  const int k_first = first_chunk * kGemvChunkK + (threadIdx.x % 4) * kGemvLaneK, k_step = chunk_stride * kGemvChunkK;
  const int k_last = k_size - kGemvLaneK;
  const GemvLaneRows<Format, kRowTiles> rows(tiles);
  const auto stage = [&](int i) {
    if (i < count) {
      const int k = k_first + i * k_step, k_read = k < k_last ? k : k_last;
#pragma unroll
      for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) Format::stage_async(rows.rows[rt][h], k_read, stages.slots[i % kDepth][rt][h]);
      }
    }
    gemv_async_commit();  // an empty group past the end keeps the wait count uniform
  };
#pragma unroll
  for (int d = 0; d < kDepth - 1; ++d) stage(d);
  wait_for_inputs();  // the weights are constant; the activations come from the previous kernel (or task)
  for (int i = 0; i < count; ++i) {
    const int k = k_first + i * k_step, k_read = k < k_last ? k : k_last;
    gemv_async_wait<kDepth - 2>();
    GemvChunkRows<Format, kRowTiles> current;
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        current.rows[rt][h] = Format::unstage(rows.rows[rt][h], k_read, stages.slots[i % kDepth][rt][h]);
      }
    }
    uint32_t xs[kTokenGroups][16];
    gemv_load_activation_chunk<kTokenGroups>(x, m, k_size, k, xs);
    gemv_multiply_chunk<Format, kTokenGroups, kRowTiles>(current, xs, acc);
    stage(i + kDepth - 1);
  }
  gemv_async_wait<0>();
}

// Bytes of dynamic shared memory gemv_block_partials needs for `warps` warps.
template <int kTokenGroups, int kRowTiles>
constexpr int gemv_reduce_smem_bytes(int warps) {
  return warps * kTokenGroups * kGemvTokensPerGroup * kRowTiles * kGemvRowsPerTile * static_cast<int>(sizeof(float));
}

// Dynamic shared memory of gemv_kernel: the reduction's, or the asynchronous stages' when larger (the
// reduction reuses them once every warp has finished its loop).
template <class Format, int kTokenGroups, int kRowTiles, int kDepth, bool kAsync>
constexpr int gemv_smem_bytes(int warps) {
  const int reduce = gemv_reduce_smem_bytes<kTokenGroups, kRowTiles>(warps);
  if constexpr (kAsync) {
    const int stages = warps * static_cast<int>(sizeof(GemvWarpStages<Format, kRowTiles, kDepth>));
    return stages > reduce ? stages : reduce;
  } else {
    return reduce;
  }
}

// A warp's fp32 sums (accumulator chains added) as [token][tile row] floats at `out`; fragment row g of
// each row tile (lanes 4g .. 4g + 3) holds tile row `fragment_row` and fragment_row + 8.
template <int kTokenGroups, int kRowTiles, int kChains>
__device__ __forceinline__ void gemv_store_warp_sums(const GemvAccumulators<kTokenGroups, kRowTiles, kChains>& acc,
                                                     int fragment_row, float* out) {
  constexpr int kRows = kRowTiles * kGemvRowsPerTile;
  const int tig = threadIdx.x % 4;
#pragma unroll
  for (int t = 0; t < kTokenGroups; ++t) {
#pragma unroll
    for (int rt = 0; rt < kRowTiles; ++rt) {
      float d[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        d[e] = acc[0][t][rt][e];
#pragma unroll
        for (int c = 1; c < kChains; ++c) d[e] += acc[c][t][rt][e];
      }
      const int token = t * kGemvTokensPerGroup + 2 * tig, row = rt * kGemvRowsPerTile + fragment_row;
      out[token * kRows + row] = d[0];
      out[(token + 1) * kRows + row] = d[1];
      out[token * kRows + row + 8] = d[2];
      out[(token + 1) * kRows + row + 8] = d[3];
    }
  }
}

// The first half of the block reduction: each warp writes its sums to its slice [token][tile row] of
// `partial` (gemv_reduce_smem_bytes of shared memory), then the block waits for all of them.
// GemvBlockSums reads the result.
template <int kTokenGroups, int kRowTiles, int kChains>
__device__ __forceinline__ void gemv_block_partials(const GemvAccumulators<kTokenGroups, kRowTiles, kChains>& acc,
                                                    float* partial) {
  constexpr int kTokens = kTokenGroups * kGemvTokensPerGroup, kRows = kRowTiles * kGemvRowsPerTile;
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4;
  gemv_store_warp_sums<kTokenGroups, kRowTiles>(acc, g, partial + warp * kTokens * kRows);
  __syncthreads();
}

// The second half: the block's warps form row_groups() groups of k_split warps each (warp w: row group
// w / k_split, K share w % k_split), and (group, token, r) is the sum of the group's k_split warps
// at row tile r / 16, tile row r % 16, added in a fixed order (deterministic).
template <int kTokenGroups, int kRowTiles>
struct GemvBlockSums {
  static constexpr int kTokens = kTokenGroups * kGemvTokensPerGroup, kRows = kRowTiles * kGemvRowsPerTile;
  const float* partial;
  int k_split;

  __device__ __forceinline__ int row_groups() const { return blockDim.x / 32 / k_split; }

  __device__ __forceinline__ float operator()(int group, int token, int r) const {
    const float* sums = partial + group * k_split * kTokens * kRows + token * kRows + r;
    float sum = 0.0f;
    for (int w = 0; w < k_split; ++w) sum += sums[w * kTokens * kRows];
    return sum;
  }
};

// The weights of one launch (gemv_kernel): up to kGemvMaxSegments matrices of one K that read the same
// activations, each with its own output (or, with paired tiles, one output the epilogue holds).
inline constexpr int kGemvMaxSegments = 4;

template <class Format>
struct GemvSegments {
  Format formats[kGemvMaxSegments];
  void* outputs[kGemvMaxSegments];
  int64_t rows[kGemvMaxSegments];
  int first_block[kGemvMaxSegments + 1];
  int count;

  void add(const Format& format, int64_t n_rows, void* y) {
    formats[count] = format;
    rows[count] = n_rows;
    outputs[count] = y;
    ++count;
  }

  // Blocks of `rows_per_block` rows; returns the grid size. Segment i owns blocks [first_block[i],
  // first_block[i + 1]), or, with paired tiles, every block covers the same rows of all segments (which
  // have equal rows).
  int assign_blocks(int64_t rows_per_block, bool paired_tiles) {
    first_block[0] = 0;
    if (paired_tiles) return static_cast<int>((rows[0] + rows_per_block - 1) / rows_per_block);
    for (int i = 0; i < count; ++i) {
      first_block[i + 1] = first_block[i] + static_cast<int>((rows[i] + rows_per_block - 1) / rows_per_block);
    }
    return first_block[count];
  }
};

// Epilogues: what gemv_kernel (and gemv_stream_kernel) does with a block's sums. Each one says how a
// warp's row tiles are laid out (kPairedTiles; GemvWarpTiles) and stores, through
//   store<Format, kTokenGroups, kRowTiles>(sums, segments, segment, block_row0, m, thread, threads)
// the block's outputs for tokens < m, output i by thread i % threads; block_row0 is the block's first row
// in its segment (in every segment with paired tiles), sums has GemvBlockSums' row_groups() and (group,
// token, r). A new epilogue is one more such struct; the kernels are shared.

// Plain GEMV: a warp's tiles are consecutive rows of its block's segment; y[token, row] = sum *
// output_multiplier into the segment's output, fp32 or bf16 [M, N].
struct GemvStoreEpilogue {
  static constexpr bool kPairedTiles = false;
  bool y_is_bf16;

  template <class Format, int kTokenGroups, int kRowTiles, class Sums>
  __device__ __forceinline__ void store(const Sums& sums, const GemvSegments<Format>& segments, int segment,
                                        int64_t block_row0, int m, int thread, int threads) const {
    constexpr int kRows = kRowTiles * kGemvRowsPerTile, kOutputs = kTokenGroups * kGemvTokensPerGroup * kRows;
    const int64_t n_rows = segments.rows[segment];
    const float multiplier = segments.formats[segment].output_multiplier;
    void* const y = segments.outputs[segment];
    for (int i = thread; i < sums.row_groups() * kOutputs; i += threads) {
      const int group = i / kOutputs, token = i % kOutputs / kRows, r = i % kRows;
      const int64_t row = block_row0 + static_cast<int64_t>(group) * kRows + r;
      if (token >= m || row >= n_rows) continue;
      const float value = sums(group, token, r) * multiplier;
      const int64_t index = static_cast<int64_t>(token) * n_rows + row;
      if (y_is_bf16) {
        static_cast<__nv_bfloat16*>(y)[index] = __float2bfloat16_rn(value);
      } else {
        static_cast<float*>(y)[index] = value;
      }
    }
  }
};

// The MLP's gate and up projections with SwiGLU (segment 0 gate, segment 1 up, of equal rows): a warp's
// two row tiles are the same 16 rows of gate and up, and out[token, row] (bf16, rows out_stride
// elements apart: the down projection's padded input) = swiglu_bf16(gate, up), where gate and up are
// the fp32 values GemvStoreEpilogue would store. That is launch_swiglu's math on the same values, so the
// result equals the plain GEMV followed by launch_swiglu bit for bit whenever the plain GEMV's tiles
// had the same accumulator chains (kGemvLaunchChains: always at one token group or two row tiles, and between a
// batch-invariant plain tuning and its paired variant).
struct GemvSwigluEpilogue {
  static constexpr bool kPairedTiles = true;
  __nv_bfloat16* out;
  int64_t out_stride;

  template <class Format, int kTokenGroups, int kRowTiles, class Sums>
  __device__ __forceinline__ void store(const Sums& sums, const GemvSegments<Format>& segments, int /*segment*/,
                                        int64_t block_row0, int m, int thread, int threads) const {
    static_assert(kRowTiles == 2, "paired tiles: tile 0 gate, tile 1 up");
    constexpr int kRows = kGemvRowsPerTile, kOutputs = kTokenGroups * kGemvTokensPerGroup * kRows;
    const int64_t n_rows = segments.rows[0];
    const float gate_multiplier = segments.formats[0].output_multiplier;
    const float up_multiplier = segments.formats[1].output_multiplier;
    for (int i = thread; i < sums.row_groups() * kOutputs; i += threads) {
      const int group = i / kOutputs, token = i % kOutputs / kRows, r = i % kRows;
      const int64_t row = block_row0 + static_cast<int64_t>(group) * kRows + r;
      if (token >= m || row >= n_rows) continue;
      const float gate = sums(group, token, r) * gate_multiplier;
      const float up = sums(group, token, kGemvRowsPerTile + r) * up_multiplier;
      out[static_cast<int64_t>(token) * out_stride + row] = swiglu_bf16(gate, up);
    }
  }
};

// Row tiles of distinct rows per warp: all of them, or one when the tiles are paired.
template <class Epilogue, int kRowTiles>
inline constexpr int kGemvDistinctRowTiles = Epilogue::kPairedTiles ? 1 : kRowTiles;

// Registers per thread of a gemv_kernel instance: at most 255 (blocks of up to 256 threads), and 168 for
// the M <= 8 register pipeline of depth 2, the decode default: up to 168 x 128 threads fit three blocks
// per SM, the 176 the compiler picked under __launch_bounds__(256) two, which cost the large-N shapes a
// quarter of their speed (kernel_bench on the H100, w4_d2_r2_k4: attn_qkv_gate 26.2 us at 176 registers,
// 19.4 at 162; bench/notes/gemv.md). No spills at 162.
template <int kTokenGroups, int kDepth, bool kAsync>
inline constexpr int kGemvMaxRegisters = (kTokenGroups == 1 && kDepth == 2 && !kAsync) ? 168 : 255;

// Block `block` of a standalone launch (gemv_kernel), by blockDim.x threads, also callable from a persistent
// kernel with the same block shape: block b of a segment owns its rows [b * R, (b + 1) * R) with R = 16 (distinct
// row tiles) * warps / k_split; each row group's k_split warps split K by interleaved chunks (warp w takes chunks
// w % k_split, + k_split, ...); the epilogue stores the sums. `smem` is gemv_smem_bytes of shared memory. The first
// weight chunks are requested before wait_for_inputs(), which waits for whatever writes x.
template <class Format, int kTokenGroups, int kRowTiles, int kDepth, bool kAsync, bool kBatchInvariant, class Epilogue,
          class WaitForInputs>
__device__ __forceinline__ void gemv_block(const GemvSegments<Format>& segments, const __nv_bfloat16* __restrict__ x,
                                           int m, int64_t k_size, int k_split, const Epilogue& epilogue, int block,
                                           float* smem, const WaitForInputs& wait_for_inputs) {
  static_assert(kTokenGroups * kGemvTokensPerGroup <= kGemvMaxTokens);
  int segment = 0;
  if constexpr (!Epilogue::kPairedTiles) {
    while (segment + 1 < segments.count && block >= segments.first_block[segment + 1]) ++segment;
  }
  constexpr int kRows = kGemvDistinctRowTiles<Epilogue, kRowTiles> * kGemvRowsPerTile;
  const int warp = threadIdx.x / 32;
  const unsigned block_in_segment = static_cast<unsigned>(block) - segments.first_block[segment];
  const int64_t block_row0 = static_cast<int64_t>(block_in_segment) * kRows * (blockDim.x / 32 / k_split);
  const int64_t warp_row0 = block_row0 + (warp / k_split) * kRows;
  GemvWarpTiles<Format, kRowTiles> tiles;
  tiles.n_rows = segments.rows[segment];
#pragma unroll
  for (int rt = 0; rt < kRowTiles; ++rt) {
    tiles.formats[rt] = segments.formats[Epilogue::kPairedTiles ? rt : segment];
    tiles.row0[rt] = Epilogue::kPairedTiles ? warp_row0 : warp_row0 + rt * kGemvRowsPerTile;
  }
  GemvAccumulators<kTokenGroups, kRowTiles, kGemvLaunchChains<kTokenGroups, kRowTiles, kBatchInvariant>> acc = {};
  if constexpr (kAsync) {
    using Stages = GemvWarpStages<Format, kRowTiles, kDepth>;
    Stages& stages = reinterpret_cast<Stages*>(smem)[warp];
    gemv_warp_partial_async<Format, kTokenGroups, kRowTiles, kDepth>(tiles, x, m, static_cast<int>(k_size),
                                                                     warp % k_split, k_split, stages, acc,
                                                                     wait_for_inputs);
    __syncthreads();  // the reduction below reuses the stages of every warp
  } else {
    gemv_warp_partial<Format, kTokenGroups, kRowTiles, kDepth>(tiles, x, m, static_cast<int>(k_size), warp % k_split,
                                                               k_split, acc, wait_for_inputs);
  }
  gemv_block_partials<kTokenGroups, kRowTiles>(acc, smem);
  epilogue.template store<Format, kTokenGroups, kRowTiles>(GemvBlockSums<kTokenGroups, kRowTiles>{smem, k_split},
                                                           segments, segment, block_row0, m, threadIdx.x, blockDim.x);
}

// The standalone launch: a dependent launch (the first weight chunks are requested before the previous kernel
// has finished, see wait_for_previous_kernel), block blockIdx.x of gemv_block.
template <class Format, int kTokenGroups, int kRowTiles, int kDepth, bool kAsync, bool kBatchInvariant, class Epilogue>
__global__ void __maxnreg__((kGemvMaxRegisters<kTokenGroups, kDepth, kAsync>))
    gemv_kernel(const GemvSegments<Format> segments, const __nv_bfloat16* __restrict__ x, int m, int64_t k_size,
                int k_split, const Epilogue epilogue) {
  extern __shared__ __align__(16) float gemv_partial[];
  allow_next_kernel();
  gemv_block<Format, kTokenGroups, kRowTiles, kDepth, kAsync, kBatchInvariant>(
      segments, x, m, k_size, k_split, epilogue, static_cast<int>(blockIdx.x), gemv_partial, WaitForPreviousKernel{});
}

}  // namespace uberlm::cuda
