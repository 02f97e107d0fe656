#pragma once
// NVFP4 weight format for the small-M GEMM of gemv_tile.cuh (W4A16: weights dequantised in registers,
// bf16 activations, fp32 accumulation on tensor cores).
//
// One lane's chunk is 16 bytes of a row (32 E2M1 codes, in the tiled order of nvfp4_gemv_layout.h) and the
// two E4M3 scales of those 32 k-values. e2m1 * e4m3 has at most 6 significant bits, so it is exact in
// bf16: the products fed to the tensor cores are the exact dequantised weights up to the global
// multiplier, applied once to the fp32 sum.
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "core/nvfp4.h"
#include "ops/cuda/gemv_tile.cuh"

namespace uberlm::cuda {

__device__ __forceinline__ uint32_t rotate_left(uint32_t x, int n) { return __funnelshift_l(x, x, n); }

// Pair p of a tiled word (nvfp4_gemv_layout.h) as bf16 bits of e2m1(code) * 2^-126 in each half: the
// sign at bit 15 and the 3 magnitude bits (exponent 2, mantissa 1) at bits [8:6], the low exponent bits
// and top mantissa bit of bf16. Code 1 (0.5) becomes the subnormal 2^-127, which bf16 arithmetic keeps
// (there is no flush-to-zero mode for bf16). p is a constant after unrolling: 1, 2, 4 and 4 ops.
__device__ __forceinline__ uint32_t nvfp4_gemv_pair(uint32_t word, int p) {
  constexpr uint32_t kBoth = 0x81C081C0u, kMagnitudes = 0x01C001C0u, kSigns = 0x80008000u;
  switch (p) {
    case 0: return word & kBoth;
    case 1: return rotate_left(word, 3) & kBoth;
    case 2: return (rotate_left(word, 6) & kMagnitudes) | (rotate_left(word, 1) & kSigns);
    default: return (rotate_left(word, 13) & kMagnitudes) | (rotate_left(word, 2) & kSigns);
  }
}

// Both E4M3 scales of a chunk as bf16 pairs {s, s} * 2^119; with the 2^-126 above each product is
// e2m1 * e4m3 * 2^-7, in bf16's normal range (>= 2^-17) and exact. 448 * 2^119 < bf16's max.
__device__ __forceinline__ void e4m3_scales_to_bf16x2(uint16_t codes, uint32_t& scale0, uint32_t& scale1) {
  const __half2_raw halves = __nv_cvt_fp8x2_to_halfraw2(codes, __NV_E4M3);  // exact
  const float2 scales = __half22float2(__half2(halves));
  const __nv_bfloat162 s0 = __float2bfloat162_rn(scales.x * 0x1p119f), s1 = __float2bfloat162_rn(scales.y * 0x1p119f);
  scale0 = *reinterpret_cast<const uint32_t*>(&s0);
  scale1 = *reinterpret_cast<const uint32_t*>(&s1);
}

__device__ __forceinline__ uint32_t bf16x2_mul(uint32_t a, uint32_t b) {
  const __nv_bfloat162 product =
      __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&a), *reinterpret_cast<const __nv_bfloat162*>(&b));
  return *reinterpret_cast<const uint32_t*>(&product);
}

struct Nvfp4Format {
  const uint8_t* packed;  // [N, K/2]
  const uint8_t* scales;  // E4M3 [N, K/16]
  int64_t k_size;
  float output_multiplier;  // global_scale * 2^7, undoing the 2^-7 of the bf16 products

  struct Chunk {
    uint4 codes;      // 32 E2M1 codes, element 2i in the low nibble of byte i
    uint32_t scales;  // the two E4M3 scale codes in the low 16 bits
  };

  struct Row {
    const uint8_t* codes;   // K/2 bytes
    const uint8_t* scales;  // K/16 bytes
  };
  __device__ __forceinline__ Row row(int64_t r) const { return {packed + r * (k_size / 2), scales + r * (k_size / 16)}; }

  // k-values [k, k + 32) of a row; k is a multiple of 32, so both loads are aligned.
  __device__ __forceinline__ static Chunk load(const Row& row, int k) {
    Chunk chunk;
    chunk.codes = load_streaming_16(row.codes + (k >> 1));
    chunk.scales = load_streaming_2(row.scales + (k >> 4));
    return chunk;
  }

  // The asynchronous pipeline's copy of one row's chunk: each lane's 16 code bytes, and the aligned
  // 4-byte word holding its two scale bytes (cp.async copies 4, 8 or 16 aligned bytes; a lane's scale
  // pair is only 2-byte aligned, so the word may start one pair earlier, inside the same buffer).
  struct Stage {
    uint4 codes[32];
    uint32_t scale_words[32];
  };

  __device__ __forceinline__ static void stage_async(const Row& row, int k, Stage& stage) {
    const int lane = threadIdx.x % 32;
    copy_async_16(&stage.codes[lane], row.codes + (k >> 1));
    const uintptr_t scales = reinterpret_cast<uintptr_t>(row.scales + (k >> 4));
    copy_async_4(&stage.scale_words[lane], reinterpret_cast<const void*>(scales & ~uintptr_t{3}));
  }

  __device__ __forceinline__ static Chunk unstage(const Row& row, int k, const Stage& stage) {
    const int lane = threadIdx.x % 32;
    const uintptr_t scales = reinterpret_cast<uintptr_t>(row.scales + (k >> 4));
    return {stage.codes[lane], stage.scale_words[lane] >> (8 * (scales & 2))};
  }

  struct Prepared {
    uint32_t scale0, scale1;  // the chunk's two block scales as bf16 pairs (e4m3_scales_to_bf16x2)
  };
  __device__ __forceinline__ static Prepared prepare(const Chunk& chunk) {
    Prepared prepared;
    e4m3_scales_to_bf16x2(static_cast<uint16_t>(chunk.scales), prepared.scale0, prepared.scale1);
    return prepared;
  }

  // Word w of the chunk holds k-values k + 8w .. k + 8w + 7 as pairs 0..3 of (k + 8w + 2p, +1). mma j
  // takes k-values k + 4j .. k + 4j + 3: pairs 2(j % 2) (k slots 2tig, 2tig+1) and 2(j % 2) + 1 (slots
  // 2tig+8, 2tig+9) of word j / 2.
  __device__ __forceinline__ static void mma_operands(const Chunk& chunk, const Prepared& prepared, int j,
                                                      uint32_t& lo, uint32_t& hi) {
    const int w = j / 2, p = 2 * (j % 2);
    const uint32_t word = w == 0 ? chunk.codes.x : w == 1 ? chunk.codes.y : w == 2 ? chunk.codes.z : chunk.codes.w;
    const uint32_t scale = w < 2 ? prepared.scale0 : prepared.scale1;  // block of 16 = words 0-1, 2-3
    lo = bf16x2_mul(nvfp4_gemv_pair(word, p), scale);
    hi = bf16x2_mul(nvfp4_gemv_pair(word, p + 1), scale);
  }

  // The activations in natural order are the B operands: mma j takes words 2j (k + 4j, +1) and 2j + 1.
  __device__ __forceinline__ static void activation_pairs(const uint32_t (&x)[16], int j, uint32_t& lo,
                                                          uint32_t& hi) {
    lo = x[2 * j];
    hi = x[2 * j + 1];
  }
};

// The kernels' view of a weight (codes in the tiled order): the global scale times 2^7 undoes the 2^-7 of
// the bf16 products.
inline Nvfp4Format nvfp4_format(const Nvfp4Weight& w) { return {w.packed, w.scales, w.cols, w.global_scale * 128.0f}; }

}  // namespace uberlm::cuda
