#pragma once
// Building blocks of the small-M GEMM y[M, N] = x[M, K] . W^T (M <= 64, decode), shared by the NVFP4
// and bf16 weight formats and meant to be called from fused decode kernels too.
//
// Work split: the tensor-core op mma.m16n8k16 (bf16 in, fp32 accumulate) takes A = 16 tokens x 16 k
// of activations and B = 16 k x 8 weight rows. A warp owns kRowGroups groups of 8 weight rows; lane
// (g = lane / 4, tig = lane % 4) streams row g of each group, k-values [32 tig, 32 tig + 32) of every
// 128-wide k-chunk: one 16-byte load for NVFP4 (four for bf16), coalesced across the four lanes of a
// row. Those 32 k-values feed 8 mma ops. Which k sits in which mma slot does not matter for a dot
// product as long as A and B agree, so each format picks the slot order that is cheapest to unpack
// and permutes the activations to match. Each dequantised weight fragment is reused for every token
// group of 16, so the weights are read from memory once whatever M is.
//
// A format provides:
//   struct Chunk;                                          raw weight bytes of one lane for one chunk
//   Chunk load(row, k) / Chunk zero()                      16-byte loads, issued early
//   void dequantise(const Chunk&, uint32_t (&b)[8][2])     bf16x2 B fragments of the 8 mma ops
//   void activation_pairs(const uint32_t (&x)[16], int j, uint32_t& lo, uint32_t& hi)
//        the A-fragment pairs (k slots 2 tig and 2 tig + 8) of mma j from 32 bf16 activations
//   float output_multiplier                                applied to the fp32 sums
//   static constexpr int kUnroll                           chunks of weight loads in flight
#include <cuda_bf16.h>

#include <cstdint>

namespace uberlm::cuda {

inline constexpr int kGemvLaneK = 32;                  // k-values one lane streams per row per chunk
inline constexpr int kGemvChunkK = 4 * kGemvLaneK;     // k-values a row's four lanes cover per chunk
inline constexpr int kGemvRowsPerGroup = 8;            // mma n
inline constexpr int kGemvTokensPerGroup = 16;         // mma m
inline constexpr int kGemvMaxTokens = 64;

// D[16 tokens x 8 rows] += A[16 x 16] . B[16 x 8]; fragment layout as in the PTX ISA for m16n8k16:
// a = {(g, 2tig..), (g+8, 2tig..), (g, 2tig+8..), (g+8, 2tig+8..)}, b = {(2tig.., g), (2tig+8.., g)},
// d = {(g, 2tig), (g, 2tig+1), (g+8, 2tig), (g+8, 2tig+1)}.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 32 bf16 activations x[token, k .. k + 32) as 16 bf16x2 words; zeros when the token or k is out of range.
__device__ __forceinline__ void load_activations(const __nv_bfloat16* x, int64_t k_size, int token, int m,
                                                 int64_t k, uint32_t (&out)[16]) {
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

// One warp's share of y: rows [row0, row0 + 8 kRowGroups), chunks warp, warp + kWarps, ... of K; the
// fp32 partial sums go to acc[token group][row group][4] in the mma D layout. kUnroll chunks of weight
// loads are in flight before the first is used.
template <class Format, int kTokenGroups, int kRowGroups, int kWarps, int kUnroll>
__device__ __forceinline__ void gemv_warp_partial(const Format& format, const __nv_bfloat16* x, int m, int64_t n_rows,
                                                  int64_t k_size, int64_t row0, int warp,
                                                  float (&acc)[kTokenGroups][kRowGroups][4]) {
  const int lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
  const int64_t n_chunks = (k_size + kGemvChunkK - 1) / kGemvChunkK;
  for (int64_t chunk0 = warp; chunk0 < n_chunks; chunk0 += kWarps * kUnroll) {
    typename Format::Chunk raw[kUnroll][kRowGroups];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = (chunk0 + u * kWarps) * kGemvChunkK + tig * kGemvLaneK;
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) {
        const int64_t row = row0 + rg * kGemvRowsPerGroup + g;
        raw[u][rg] = (row < n_rows && k < k_size) ? format.load(row, k) : Format::zero();
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t chunk = chunk0 + u * kWarps;
      if (chunk >= n_chunks) break;  // warp-uniform
      const int64_t k = chunk * kGemvChunkK + tig * kGemvLaneK;
      uint32_t b[kRowGroups][8][2];
#pragma unroll
      for (int rg = 0; rg < kRowGroups; ++rg) format.dequantise(raw[u][rg], b[rg]);
#pragma unroll
      for (int t = 0; t < kTokenGroups; ++t) {
        uint32_t x_lo[16], x_hi[16];  // tokens 16t + g and 16t + g + 8
        load_activations(x, k_size, t * kGemvTokensPerGroup + g, m, k, x_lo);
        load_activations(x, k_size, t * kGemvTokensPerGroup + g + 8, m, k, x_hi);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
          uint32_t a[4];
          Format::activation_pairs(x_lo, j, a[0], a[2]);
          Format::activation_pairs(x_hi, j, a[1], a[3]);
#pragma unroll
          for (int rg = 0; rg < kRowGroups; ++rg) mma_bf16_m16n8k16(acc[t][rg], a, b[rg][j][0], b[rg][j][1]);
        }
      }
    }
  }
}

// Sums the kWarps partials of a block in a fixed order (deterministic) and writes
// y[token, row] = sum * multiplier for token < m, row < n_rows; y is fp32 or bf16 [M, N].
template <int kTokenGroups, int kRowGroups, int kWarps>
__device__ __forceinline__ void gemv_block_reduce_store(const float (&acc)[kTokenGroups][kRowGroups][4], int m,
                                                        int64_t n_rows, int64_t row0, float multiplier, void* y,
                                                        bool y_is_bf16) {
  constexpr int kTokens = kTokenGroups * kGemvTokensPerGroup, kRows = kRowGroups * kGemvRowsPerGroup;
  __shared__ float partial[kWarps][kTokens][kRows];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int t = 0; t < kTokenGroups; ++t) {
#pragma unroll
    for (int rg = 0; rg < kRowGroups; ++rg) {
      const int token = t * kGemvTokensPerGroup + g, row = rg * kGemvRowsPerGroup + 2 * tig;
      partial[warp][token][row] = acc[t][rg][0];
      partial[warp][token][row + 1] = acc[t][rg][1];
      partial[warp][token + 8][row] = acc[t][rg][2];
      partial[warp][token + 8][row + 1] = acc[t][rg][3];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTokens * kRows; i += kWarps * 32) {
    const int token = i / kRows, r = i % kRows;
    const int64_t row = row0 + r;
    if (token >= m || row >= n_rows) continue;
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += partial[w][token][r];
    const int64_t index = static_cast<int64_t>(token) * n_rows + row;
    if (y_is_bf16) {
      static_cast<__nv_bfloat16*>(y)[index] = __float2bfloat16_rn(sum * multiplier);
    } else {
      static_cast<float*>(y)[index] = sum * multiplier;
    }
  }
}

// The standalone launch: block b owns rows [b * 8 kRowGroups, ...) and its kWarps warps split K.
template <class Format, int kTokenGroups, int kRowGroups, int kWarps, int kUnroll>
__global__ void __launch_bounds__(kWarps * 32)
    gemv_kernel(Format format, const __nv_bfloat16* __restrict__ x, int m, int64_t n_rows, int64_t k_size, void* y,
                bool y_is_bf16) {
  static_assert(kTokenGroups * kGemvTokensPerGroup <= kGemvMaxTokens);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowGroups * kGemvRowsPerGroup;
  float acc[kTokenGroups][kRowGroups][4] = {};
  gemv_warp_partial<Format, kTokenGroups, kRowGroups, kWarps, kUnroll>(format, x, m, n_rows, k_size, row0,
                                                                        threadIdx.x / 32, acc);
  gemv_block_reduce_store<kTokenGroups, kRowGroups, kWarps>(acc, m, n_rows, row0, format.output_multiplier, y,
                                                            y_is_bf16);
}

}  // namespace uberlm::cuda
