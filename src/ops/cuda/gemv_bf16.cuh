#pragma once
// bf16 weight format for the small-M GEMM of gemv_tile.cuh (unquantised lm_head, GDN projections).
// One lane's chunk is 32 consecutive bf16 of a row, four 16-byte loads; mma j takes k-values
// 4j .. 4j+3 in natural order, so activations need no permutation.
#include <cstdint>

#include "ops/cuda/gemv_tile.cuh"

namespace uberlm::cuda {

struct Bf16Format {
  const __nv_bfloat16* weight;  // [N, K]
  int64_t k_size;
  float output_multiplier;

  struct Chunk {
    uint4 words[4];
  };

  using Row = const __nv_bfloat16*;
  __device__ __forceinline__ Row row(int64_t r) const { return weight + r * k_size; }

  __device__ __forceinline__ static Chunk load(Row row, int k) {
    const uint4* src = reinterpret_cast<const uint4*>(row + k);
    Chunk chunk;
#pragma unroll
    for (int i = 0; i < 4; ++i) chunk.words[i] = load_streaming_16(src + i);
    return chunk;
  }

  struct Prepared {};
  __device__ __forceinline__ static Prepared prepare(const Chunk&) { return {}; }

  __device__ __forceinline__ static void mma_operands(const Chunk& chunk, const Prepared&, int j, uint32_t& lo,
                                                      uint32_t& hi) {
    const uint4& word = chunk.words[j / 2];
    lo = j % 2 == 0 ? word.x : word.z;
    hi = j % 2 == 0 ? word.y : word.w;
  }

  __device__ __forceinline__ static void activation_pairs(const uint32_t (&x)[16], int j, uint32_t& lo,
                                                          uint32_t& hi) {
    lo = x[2 * j];
    hi = x[2 * j + 1];
  }
};

}  // namespace uberlm::cuda
