#pragma once
// Warp-level tensor-core fragments (mma.sync, sm_80 and later), shared by the GEMV tiles and the prefill
// attention. g = lane / 4 and tig = lane % 4 name a lane's place in a fragment.
#include <cuda_bf16.h>

#include <cstdint>

namespace uberlm::cuda {

// D[16 x 8] += A[16 x 16] . B[16 x 8], bf16 in, fp32 accumulate; fragment layout as in the PTX ISA for
// m16n8k16: a = {(g, 2tig..), (g+8, 2tig..), (g, 2tig+8..), (g+8, 2tig+8..)}, b = {(2tig.., g),
// (2tig+8.., g)}, d = {(g, 2tig), (g, 2tig+1), (g+8, 2tig), (g+8, 2tig+1)}.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 bf16 matrices from shared memory: lane i names row i % 8 of matrix i / 8, and receives of each
// matrix the pair at row lane / 4, columns 2 (lane % 4) and + 1 (one register per matrix). For a row-major
// [m][k] tile these are A fragments of m16n8k16 with matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7,
// k 8-15), (rows 8-15, k 8-15); for a row-major [n][k] tile, B fragments (b0 b1 of one 8-wide n-tile per two
// matrices: (n 0-7, k 0-7), (n 0-7, k 8-15)).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// Four 8x8 bf16 matrices from shared memory, transposed: lane i names row i % 8 of matrix i / 8. For a
// [k][n] row-major tile this yields B fragments of m16n8k16: with matrices (k 0-7, n 0-7), (k 8-15,
// n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15), r0 r1 are b0 b1 of columns n 0-7 and r2 r3 of n 8-15.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_address) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row_address));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// D[16 x 8] += A[16 x 8] . B[8 x 8], tf32 in (10-bit mantissa), fp32 accumulate; fragment layout as in the
// PTX ISA for m16n8k8 .tf32: a = {(g, tig), (g+8, tig), (g, tig+4), (g+8, tig+4)}, b = {(tig, g), (tig+4, g)},
// d as for m16n8k16.
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// fp32 rounded to the nearest tf32 (ties away from zero), as an mma operand word.
__device__ __forceinline__ uint32_t to_tf32(float x) {
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
}

// Two fp32 values as one bf16x2 fragment word: `low` in the low half (the lower k index).
__device__ __forceinline__ uint32_t pack_bf16x2(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

}  // namespace uberlm::cuda
