// The NVFP4 small-M GEMM on Hopper's warpgroup MMA (branch wgmma-small-m; bench/notes/gemv.md, session 30):
// tokens are wgmma's M (64), weight rows its N, so one m64n128k16 does the work of 64 mma.sync of the GEMV tile
// at M = 64, and the tensor core reads both operands from shared memory.
// Second version (NOT YET RUN ON A GPU; the first, one warpgroup of 64 rows over all of K, passed its test at
// 7-15% of the copy bandwidth): a block of two warpgroups takes 256 weight rows (128 each) over a share of K, so
// one activation tile serves 256 rows and the grid is rows / 256 x K splits (about one block an SM). Per chunk of
// 64 k-values:
//   - cp.async brings the chunk's NVFP4 codes (32 bytes a row, the GEMV's tiled order), its E4M3 scales and the
//     tokens' activations (64 x 64 bf16, 128-byte swizzled, tokens past m zero-filled) two chunks ahead;
//   - each thread dequantises two rows' 32 k-values (16-byte code groups) into the chunk's bf16 weight tile
//     (128-byte swizzled) with the GEMV's exact unpack (e2m1 * e4m3 * 2^-7, exact in bf16);
//   - each warpgroup's four wgmma accumulate its 128 rows; one chunk's products stay in flight while the next is
//     dequantised.
// With K split, each block writes its fp32 sums to the workspace, and the last block of a row tile to arrive
// adds the splits in split order (the same bits whichever arrives last), times global_scale * 2^7, into y.
#include "ops/cuda/gemm_nvfp4_wgmma.h"

#include <cuda_pipeline.h>

#include <algorithm>

#include "ops/cuda/gemv_nvfp4.cuh"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/wgmma.cuh"

namespace uberlm::cuda {

namespace {

constexpr int kTokens = 64;                        // wgmma M
constexpr int kGroupRows = 128;                    // weight rows a warpgroup: wgmma N
constexpr int kWarpgroups = 2;
constexpr int kRows = kGroupRows * kWarpgroups;    // weight rows a block
constexpr int kChunkK = 64;                        // k-values a chunk: one 128-byte row of bf16
constexpr int kStages = 4;                         // chunks of codes, scales and activations in flight or in use
constexpr int kThreads = 128 * kWarpgroups;

struct Tiles {
  static constexpr uint32_t kActivationBytes = kTokens * kChunkK * 2;  // one stage
  static constexpr uint32_t kWeightBytes = kRows * kChunkK * 2;        // one bf16 weight tile (both warpgroups')
  static constexpr uint32_t kGroupWeightBytes = kGroupRows * kChunkK * 2;
  static constexpr uint32_t kCodeBytes = kRows * kChunkK / 2;          // one stage of codes
  static constexpr uint32_t kScaleBytes = kRows * kChunkK / 16;        // one stage of scales
  // Layout: activations [kStages], weight tiles [2] (both 1024-byte aligned for the swizzle), codes [kStages],
  // scales [kStages].
  static constexpr uint32_t kWeightsAt = kStages * kActivationBytes;
  static constexpr uint32_t kCodesAt = kWeightsAt + 2 * kWeightBytes;
  static constexpr uint32_t kScalesAt = kCodesAt + kStages * kCodeBytes;
  static constexpr size_t kSharedBytes = kScalesAt + kStages * kScaleBytes + 1024;
};

struct SmallMArgs {
  const uint8_t* packed;
  const uint8_t* scales;
  int64_t n, k;
  float output_multiplier;
  const __nv_bfloat16* x;
  int m;
  void* y;
  bool y_is_bf16;
  int splits;          // blocks sharing a row tile's K (gridDim.y)
  float* partials;     // splits > 1: fp32 [splits, m, n]
  int* tile_arrivals;  // splits > 1: a count per row tile, zero between launches
};

// Chunk `chunk`'s codes, scales and activations into stage `stage` (one cp.async group, committed by the caller).
__device__ __forceinline__ void request_chunk(const SmallMArgs& args, int64_t row0, int chunk, unsigned char* smem,
                                              int stage) {
  const int tid = threadIdx.x;
  const int64_t k0 = static_cast<int64_t>(chunk) * kChunkK;
  // Codes: a row's 32 bytes as two 16-byte groups. Rows past N read the last row (never stored).
  for (int i = tid; i < 2 * kRows; i += kThreads) {
    const int row = i / 2, half = i % 2;
    const int64_t source_row = min(row0 + row, args.n - 1);
    __pipeline_memcpy_async(smem + Tiles::kCodesAt + stage * Tiles::kCodeBytes + row * 32 + half * 16,
                            args.packed + source_row * (args.k / 2) + k0 / 2 + half * 16, 16);
  }
  // Scales: 4 bytes a row.
  for (int row = tid; row < kRows; row += kThreads) {
    const int64_t source_row = min(row0 + row, args.n - 1);
    __pipeline_memcpy_async(smem + Tiles::kScalesAt + stage * Tiles::kScaleBytes + row * 4,
                            args.scales + source_row * (args.k / 16) + k0 / 16, 4);
  }
  // Activations: 64 tokens x 8 vectors of 8 bf16, swizzled; tokens past m zero-filled.
  unsigned char* activations = smem + stage * Tiles::kActivationBytes;
  for (int i = tid; i < kTokens * (kChunkK / 8); i += kThreads) {
    const int token = i / (kChunkK / 8), vector = i % (kChunkK / 8);
    const bool present = token < args.m;
    const __nv_bfloat16* source = args.x + (present ? static_cast<int64_t>(token) * args.k + k0 + vector * 8 : 0);
    __pipeline_memcpy_async(activations + smem_swizzled_offset(token, vector * 8), source, 16, present ? 0 : 16);
  }
}

// The stage's codes of rows i / 2, k-values 32 (i % 2) .. + 31, for i = tid, tid + kThreads, into the bf16 weight
// tile, 8 at a time (warpgroup g's rows start kGroupWeightBytes after g - 1's).
__device__ __forceinline__ void dequantise_chunk(const unsigned char* smem, int stage, unsigned char* weights) {
  for (int i = threadIdx.x; i < 2 * kRows; i += kThreads) {
    const int row = i / 2, half = i % 2;
    const uint4 codes =
        *reinterpret_cast<const uint4*>(smem + Tiles::kCodesAt + stage * Tiles::kCodeBytes + row * 32 + half * 16);
    const uint16_t scale_codes =
        *reinterpret_cast<const uint16_t*>(smem + Tiles::kScalesAt + stage * Tiles::kScaleBytes + row * 4 + half * 2);
    uint32_t scale0, scale1;
    e4m3_scales_to_bf16x2(scale_codes, scale0, scale1);
    const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
    unsigned char* group_tile = weights + (row / kGroupRows) * Tiles::kGroupWeightBytes;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint32_t scale = w < 2 ? scale0 : scale1;  // a 16-value scale block is two words
      uint4 values;  // k-values 32 half + 8w .. + 7: word w's pairs 0..3 in order (gemv_nvfp4.cuh)
      values.x = bf16x2_mul(nvfp4_gemv_pair(words[w], 0), scale);
      values.y = bf16x2_mul(nvfp4_gemv_pair(words[w], 1), scale);
      values.z = bf16x2_mul(nvfp4_gemv_pair(words[w], 2), scale);
      values.w = bf16x2_mul(nvfp4_gemv_pair(words[w], 3), scale);
      *reinterpret_cast<uint4*>(group_tile + smem_swizzled_offset(row % kGroupRows, half * 32 + 8 * w)) = values;
    }
  }
}

// Element e of this thread's accumulators: token and weight row (within the block's tile).
struct AccumulatorPlace {
  int token, row;
};
__device__ __forceinline__ AccumulatorPlace accumulator_place(int e) {
  const int warp = threadIdx.x % 128 / 32, group = threadIdx.x / 128;
  const int g = threadIdx.x % 32 / 4, tig = threadIdx.x % 4;
  return {16 * warp + g + 8 * (e % 4 / 2), group * kGroupRows + 8 * (e / 4) + 2 * tig + e % 2};
}

__device__ __forceinline__ void store_output(const SmallMArgs& args, int64_t row, int token, float sum) {
  const float value = sum * args.output_multiplier;
  const int64_t index = static_cast<int64_t>(token) * args.n + row;
  if (args.y_is_bf16) {
    static_cast<__nv_bfloat16*>(args.y)[index] = __float2bfloat16_rn(value);
  } else {
    static_cast<float*>(args.y)[index] = value;
  }
}

__global__ void __launch_bounds__(kThreads, 1) gemm_nvfp4_wgmma_kernel(const SmallMArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  unsigned char* smem = shared_bytes + ((1024 - __cvta_generic_to_shared(shared_bytes) % 1024) % 1024);
  __shared__ bool last_split;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int chunks = static_cast<int>(args.k / kChunkK), per_split = (chunks + args.splits - 1) / args.splits;
  const int first = static_cast<int>(blockIdx.y) * per_split, end = min(chunks, first + per_split);
  const int group = threadIdx.x / 128;
  begin_dependent_kernel();  // the chunks' copies include the activations
  if (first < end) request_chunk(args, row0, first, smem, 0);
  __pipeline_commit();
  if (first + 1 < end) request_chunk(args, row0, first + 1, smem, 1);
  __pipeline_commit();
  float acc[kGroupRows / 2] = {};  // see accumulator_place
  for (int chunk = first, round = 0; chunk < end; ++chunk, ++round) {
    // Stage (round + 2) % kStages last held round - 2, whose products finished before the previous round's end.
    if (chunk + 2 < end) request_chunk(args, row0, chunk + 2, smem, (round + 2) % kStages);
    __pipeline_commit();
    __pipeline_wait_prior(2);  // this thread's copies of this chunk
    __syncthreads();           // ... and every thread's
    unsigned char* weights = smem + Tiles::kWeightsAt + (round % 2) * Tiles::kWeightBytes;
    dequantise_chunk(smem, round % kStages, weights);
    fence_shared_for_wgmma();
    __syncthreads();  // the weight tile is complete
    const unsigned char* activations = smem + (round % kStages) * Tiles::kActivationBytes;
    const unsigned char* group_weights = weights + group * Tiles::kGroupWeightBytes;
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kChunkK / 16; ++step) {
      const uint64_t a = wgmma_descriptor(activations + step * 32, 16, 1024);
      const uint64_t b = wgmma_descriptor(group_weights + step * 32, 16, 1024);
      wgmma_m64n128k16_ss(acc, a, b, 1);
    }
    wgmma_commit();
    wgmma_wait<1>();  // the previous chunk's products are done: its weight tile and stage may be refilled
  }
  wgmma_wait<0>();

  if (args.splits == 1) {
#pragma unroll
    for (int e = 0; e < kGroupRows / 2; ++e) {
      const AccumulatorPlace place = accumulator_place(e);
      if (place.token < args.m && row0 + place.row < args.n) store_output(args, row0 + place.row, place.token, acc[e]);
    }
    return;
  }
  // Split K: this block's sums to the workspace; the last block of the row tile adds all splits in order.
  const int64_t split_floats = static_cast<int64_t>(args.m) * args.n;
#pragma unroll
  for (int e = 0; e < kGroupRows / 2; ++e) {
    const AccumulatorPlace place = accumulator_place(e);
    if (place.token < args.m && row0 + place.row < args.n) {
      args.partials[blockIdx.y * split_floats + static_cast<int64_t>(place.token) * args.n + row0 + place.row] = acc[e];
    }
  }
  __threadfence();  // this thread's sums before the block's arrival
  __syncthreads();
  if (threadIdx.x == 0) {
    last_split = atomicAdd(&args.tile_arrivals[blockIdx.x], 1) == args.splits - 1;
    if (last_split) args.tile_arrivals[blockIdx.x] = 0;  // every split has arrived: ready for the next launch
    __threadfence();
  }
  __syncthreads();
  if (!last_split) return;
#pragma unroll 4
  for (int e = 0; e < kGroupRows / 2; ++e) {
    const AccumulatorPlace place = accumulator_place(e);
    if (place.token >= args.m || row0 + place.row >= args.n) continue;
    const int64_t index = static_cast<int64_t>(place.token) * args.n + row0 + place.row;
    float sum = 0.0f;
    for (int s = 0; s < args.splits; ++s) sum += __ldcg(args.partials + s * split_floats + index);
    store_output(args, row0 + place.row, place.token, sum);
  }
#else
  __trap();  // only built for sm_90a
#endif
}

}  // namespace

int gemm_nvfp4_wgmma_splits(int64_t n, int64_t k) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    sms = 132;
  }
  const int64_t tiles = (n + kRows - 1) / kRows, chunks = k / kChunkK;
  // About one block an SM, each with at least 4 chunks.
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(sms / tiles, chunks / 4));
  return static_cast<int>(splits);
}

int64_t gemm_nvfp4_wgmma_row_tiles(int64_t n) { return (n + kRows - 1) / kRows; }

namespace detail {

cudaError_t launch_gemm_nvfp4_wgmma(const Nvfp4Weight& weight, const void* x, int m, void* y, bool y_is_bf16,
                                    int splits, const GemmWgmmaWorkspace& workspace, cudaStream_t stream) {
  const cudaError_t allowed = allow_dynamic_shared_memory(gemm_nvfp4_wgmma_kernel, Tiles::kSharedBytes);
  if (allowed != cudaSuccess) return allowed;
  const SmallMArgs args{weight.packed,
                        weight.scales,
                        weight.rows,
                        weight.cols,
                        weight.global_scale * 128.0f,
                        static_cast<const __nv_bfloat16*>(x),
                        m,
                        y,
                        y_is_bf16,
                        splits,
                        workspace.partials,
                        workspace.tile_arrivals};
  const dim3 grid(blocks_for(weight.rows, kRows), static_cast<unsigned>(splits));
  return launch_dependent(gemm_nvfp4_wgmma_kernel, grid, dim3(kThreads), Tiles::kSharedBytes, stream, args);
}

}  // namespace detail

}  // namespace uberlm::cuda
