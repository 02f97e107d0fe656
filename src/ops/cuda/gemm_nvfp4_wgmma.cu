// The NVFP4 small-M GEMM on Hopper's warpgroup MMA (branch wgmma-small-m, first version; bench/notes/gemv.md,
// session 30): tokens are wgmma's M (64 a warpgroup), weight rows its N (64 a block), so one m64n64k16 does the
// work of 32 mma.sync of the GEMV tile at M = 64, and the tensor core reads both operands from shared memory.
// A block of one warpgroup takes 64 weight rows over all of K, in chunks of 64 k-values:
//   - cp.async brings the chunk's NVFP4 codes (32 bytes a row, the GEMV's tiled order), its E4M3 scales and the
//     tokens' activations (64 x 64 bf16, 128-byte swizzled, tokens past m zero-filled) two chunks ahead;
//   - each thread dequantises one row's 32 k-values (a 16-byte code group) into the chunk's bf16 weight tile
//     (128-byte swizzled) with the GEMV's exact unpack (e2m1 * e4m3 * 2^-7, exact in bf16);
//   - four wgmma accumulate the chunk; one chunk's products stay in flight while the next is dequantised.
// The fp32 sums times global_scale * 2^7 are the output, as the GEMV's.
#include "ops/cuda/gemm_nvfp4_wgmma.h"

#include <cuda_pipeline.h>

#include "ops/cuda/gemv_nvfp4.cuh"
#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/wgmma.cuh"

namespace uberlm::cuda {

namespace {

constexpr int kTokens = 64;   // wgmma M
constexpr int kRows = 64;     // weight rows a block: wgmma N
constexpr int kChunkK = 64;   // k-values a chunk: one 128-byte row of bf16
constexpr int kStages = 4;    // chunks of codes, scales and activations in flight or in use
constexpr int kThreads = 128;

struct Tiles {
  static constexpr uint32_t kActivationBytes = kTokens * kChunkK * 2;  // one stage
  static constexpr uint32_t kWeightBytes = kRows * kChunkK * 2;        // one bf16 weight tile
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
};

// Chunk `chunk`'s codes, scales and activations into stage `stage` (one cp.async group, committed by the caller).
__device__ __forceinline__ void request_chunk(const SmallMArgs& args, int64_t row0, int chunk, unsigned char* smem,
                                              int stage) {
  const int tid = threadIdx.x;
  const int64_t k0 = static_cast<int64_t>(chunk) * kChunkK;
  // Codes: a row's 32 bytes as two 16-byte groups, one a thread. Rows past N read the last row (never stored).
  {
    const int row = tid / 2, half = tid % 2;
    const int64_t source_row = min(row0 + row, args.n - 1);
    __pipeline_memcpy_async(smem + Tiles::kCodesAt + stage * Tiles::kCodeBytes + row * 32 + half * 16,
                            args.packed + source_row * (args.k / 2) + k0 / 2 + half * 16, 16);
  }
  // Scales: 4 bytes a row.
  if (tid < kRows) {
    const int64_t source_row = min(row0 + tid, args.n - 1);
    __pipeline_memcpy_async(smem + Tiles::kScalesAt + stage * Tiles::kScaleBytes + tid * 4,
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

// Row tid / 2's k-values 32 (tid % 2) .. + 31 of stage `stage` into the bf16 weight tile, 8 at a time.
__device__ __forceinline__ void dequantise_chunk(const unsigned char* smem, int stage, unsigned char* weights) {
  const int row = threadIdx.x / 2, half = threadIdx.x % 2;
  const uint4 codes =
      *reinterpret_cast<const uint4*>(smem + Tiles::kCodesAt + stage * Tiles::kCodeBytes + row * 32 + half * 16);
  const uint16_t scale_codes =
      *reinterpret_cast<const uint16_t*>(smem + Tiles::kScalesAt + stage * Tiles::kScaleBytes + row * 4 + half * 2);
  uint32_t scale0, scale1;
  e4m3_scales_to_bf16x2(scale_codes, scale0, scale1);
  const uint32_t words[4] = {codes.x, codes.y, codes.z, codes.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    const uint32_t scale = w < 2 ? scale0 : scale1;  // a 16-value scale block is two words
    uint4 values;  // k-values 32 half + 8w .. + 7: word w's pairs 0..3 in order (gemv_nvfp4.cuh)
    values.x = bf16x2_mul(nvfp4_gemv_pair(words[w], 0), scale);
    values.y = bf16x2_mul(nvfp4_gemv_pair(words[w], 1), scale);
    values.z = bf16x2_mul(nvfp4_gemv_pair(words[w], 2), scale);
    values.w = bf16x2_mul(nvfp4_gemv_pair(words[w], 3), scale);
    *reinterpret_cast<uint4*>(weights + smem_swizzled_offset(row, half * 32 + 8 * w)) = values;
  }
}

__global__ void __launch_bounds__(kThreads) gemm_nvfp4_wgmma_kernel(const SmallMArgs args) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  unsigned char* smem = shared_bytes + ((1024 - __cvta_generic_to_shared(shared_bytes) % 1024) % 1024);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const int chunks = static_cast<int>(args.k / kChunkK);
  begin_dependent_kernel();  // the chunks' copies include the activations
  request_chunk(args, row0, 0, smem, 0);
  __pipeline_commit();
  if (chunks > 1) request_chunk(args, row0, 1, smem, 1);
  __pipeline_commit();
  float acc[kRows / 2] = {};  // tokens 16 warp + g (+ 8), weight rows 8 i + 2 tig (+ 1): d[4 i + e]
  for (int chunk = 0; chunk < chunks; ++chunk) {
    // Stage (chunk + 2) % kStages last held chunk - 2, whose products finished before the previous round's end.
    if (chunk + 2 < chunks) request_chunk(args, row0, chunk + 2, smem, (chunk + 2) % kStages);
    __pipeline_commit();
    __pipeline_wait_prior(2);  // this thread's copies of this chunk
    __syncthreads();           // ... and every thread's
    unsigned char* weights = smem + Tiles::kWeightsAt + (chunk % 2) * Tiles::kWeightBytes;
    dequantise_chunk(smem, chunk % kStages, weights);
    fence_shared_for_wgmma();
    __syncthreads();  // the weight tile is complete
    const unsigned char* activations = smem + (chunk % kStages) * Tiles::kActivationBytes;
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < kChunkK / 16; ++step) {
      const uint64_t a = wgmma_descriptor(activations + step * 32, 16, 1024);
      const uint64_t b = wgmma_descriptor(weights + step * 32, 16, 1024);
      wgmma_m64n64k16_ss(acc, a, b, 1);
    }
    wgmma_commit();
    wgmma_wait<1>();  // the previous chunk's products are done: its weight tile and stage may be refilled
  }
  wgmma_wait<0>();
  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, tig = threadIdx.x % 4;
#pragma unroll
  for (int i = 0; i < kRows / 8; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int token = 16 * warp + g + 8 * (e / 2);
      const int64_t row = row0 + 8 * i + 2 * tig + (e % 2);
      if (token >= args.m || row >= args.n) continue;
      const float value = acc[4 * i + e] * args.output_multiplier;
      const int64_t index = static_cast<int64_t>(token) * args.n + row;
      if (args.y_is_bf16) {
        static_cast<__nv_bfloat16*>(args.y)[index] = __float2bfloat16_rn(value);
      } else {
        static_cast<float*>(args.y)[index] = value;
      }
    }
  }
#else
  __trap();  // only built for sm_90a
#endif
}

}  // namespace

namespace detail {

cudaError_t launch_gemm_nvfp4_wgmma(const Nvfp4Weight& weight, const void* x, int m, void* y, bool y_is_bf16,
                                    cudaStream_t stream) {
  const cudaError_t allowed = allow_dynamic_shared_memory(gemm_nvfp4_wgmma_kernel, Tiles::kSharedBytes);
  if (allowed != cudaSuccess) return allowed;
  const SmallMArgs args{weight.packed, weight.scales, weight.rows, weight.cols, weight.global_scale * 128.0f,
                        static_cast<const __nv_bfloat16*>(x), m, y, y_is_bf16};
  return launch_dependent(gemm_nvfp4_wgmma_kernel, dim3(blocks_for(weight.rows, kRows)), dim3(kThreads),
                          Tiles::kSharedBytes, stream, args);
}

}  // namespace detail

}  // namespace uberlm::cuda
