#pragma once
// Hopper warpgroup tensor-core operations (wgmma, sm_90a): a warpgroup of four warps multiplies a 64-row A by a
// B in shared memory, asynchronously. The accumulator D of m64nNk16 is, per warp w of the group, rows 16w..16w+15
// in the m16n8 accumulator layout repeated over N / 8 column tiles (d[4i + e] is column tile i's element e), so
// code written for mma.sync's fragments (mma.cuh) reads it unchanged. Shared-memory operands here use the
// 128-byte swizzle: rows of 64 bf16 (128 bytes), the 16-byte chunk c of row r stored at chunk c ^ (r % 8),
// in patterns of 8 rows that start on 1024-byte boundaries (smem_swizzled_offset).
#include <cstdint>

namespace uberlm::cuda {

// Byte offset of element `column` (0..63) of row `row` in a 128-byte-swizzled panel of 64-element rows.
__host__ __device__ constexpr uint32_t smem_swizzled_offset(int row, int column) {
  return static_cast<uint32_t>(row * 128 + (((column / 8) ^ (row % 8)) * 16) + (column % 8) * 2);
}

// The shared-memory matrix descriptor of an operand at `address` with the 128-byte swizzle. K-major operands
// (rows along M or N, 64 k-values a row): stride_bytes is the distance between 8-row groups, leading_bytes is
// unused (1). N-major operands: leading_bytes is the distance between 64-column panels along N, stride_bytes
// between groups of 8 k-rows.
__device__ __forceinline__ uint64_t wgmma_descriptor(const void* address, uint32_t leading_bytes,
                                                     uint32_t stride_bytes) {
  const uint32_t shared = static_cast<uint32_t>(__cvta_generic_to_shared(address));
  return static_cast<uint64_t>((shared & 0x3FFFF) >> 4) | (static_cast<uint64_t>(leading_bytes >> 4) << 16) |
         (static_cast<uint64_t>(stride_bytes >> 4) << 32) | (uint64_t{1} << 62);
}

// Orders this thread's earlier register writes (accumulators, A fragments) before the next wgmma reads them.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most `kPending` committed groups of this warpgroup are still running.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Makes this thread's shared-memory writes (st.shared, cp.async) visible to wgmma's operand reads (the async
// proxy); before the barrier that publishes them.
__device__ __forceinline__ void fence_shared_for_wgmma() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The asm operands of an m64nNk16 accumulator of kN / 2 floats per thread (d[0] .. d[kN / 2 - 1]) and of a register A
// fragment, spelled once for every wrapper below.
#define UBERLM_WGMMA_ACCUMULATORS_4_FROM(i) "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3])
#define UBERLM_WGMMA_ACCUMULATORS_16_FROM(i)                                                      \
  UBERLM_WGMMA_ACCUMULATORS_4_FROM(i), UBERLM_WGMMA_ACCUMULATORS_4_FROM((i) + 4),               \
      UBERLM_WGMMA_ACCUMULATORS_4_FROM((i) + 8), UBERLM_WGMMA_ACCUMULATORS_4_FROM((i) + 12)
#define UBERLM_WGMMA_ACCUMULATORS_4 UBERLM_WGMMA_ACCUMULATORS_4_FROM(0)
#define UBERLM_WGMMA_ACCUMULATORS_8 UBERLM_WGMMA_ACCUMULATORS_4_FROM(0), UBERLM_WGMMA_ACCUMULATORS_4_FROM(4)
#define UBERLM_WGMMA_ACCUMULATORS_16 UBERLM_WGMMA_ACCUMULATORS_16_FROM(0)
#define UBERLM_WGMMA_ACCUMULATORS_32 UBERLM_WGMMA_ACCUMULATORS_16_FROM(0), UBERLM_WGMMA_ACCUMULATORS_16_FROM(16)
#define UBERLM_WGMMA_ACCUMULATORS_64 UBERLM_WGMMA_ACCUMULATORS_32, UBERLM_WGMMA_ACCUMULATORS_16_FROM(32), \
                                     UBERLM_WGMMA_ACCUMULATORS_16_FROM(48)
#define UBERLM_WGMMA_ACCUMULATORS_128                                                                 \
  UBERLM_WGMMA_ACCUMULATORS_64, UBERLM_WGMMA_ACCUMULATORS_16_FROM(64), UBERLM_WGMMA_ACCUMULATORS_16_FROM(80), \
      UBERLM_WGMMA_ACCUMULATORS_16_FROM(96), UBERLM_WGMMA_ACCUMULATORS_16_FROM(112)
#define UBERLM_WGMMA_A_FRAGMENT "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3])

// D[64 x 64] (+)= A[64 x 16] . B[16 x 64], A and B K-major in shared memory (their descriptors); accumulate 0
// overwrites D.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t desc_a, uint64_t desc_b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : UBERLM_WGMMA_ACCUMULATORS_32
      : "l"(desc_a), "l"(desc_b), "r"(accumulate));
}

// D[64 x kN] += A[64 x 16] . B[16 x kN] for kN = 8, 16, 32, 64 or 128: A in registers (each warp's 16 rows as the
// m16n8k16 A fragment), B K-major in shared memory (its descriptor: kN rows of 64 k-values, 128-byte swizzled).
template <int kN>
__device__ __forceinline__ void wgmma_m64nNk16_rs(float (&d)[kN / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(kN == 8 || kN == 16 || kN == 32 || kN == 64 || kN == 128,
                "wgmma_m64nNk16_rs: kN is 8, 16, 32, 64 or 128");
  if constexpr (kN == 8) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
        : UBERLM_WGMMA_ACCUMULATORS_4
        : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
  } else if constexpr (kN == 16) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
        : UBERLM_WGMMA_ACCUMULATORS_8
        : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
  } else if constexpr (kN == 32) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
        : UBERLM_WGMMA_ACCUMULATORS_16
        : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
  } else if constexpr (kN == 64) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
        : UBERLM_WGMMA_ACCUMULATORS_32
        : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
  } else if constexpr (kN == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
        : UBERLM_WGMMA_ACCUMULATORS_64
        : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
  }
}

// D[64 x 128] += A[64 x 16] . B[16 x 128], A in registers (each warp's 16 rows as the m16n8k16 A fragment), B N-major
// in shared memory (its descriptor, imm-trans-b 1).
__device__ __forceinline__ void wgmma_m64n128k16_rs_n_major_b(float (&d)[64], const uint32_t (&a)[4], uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : UBERLM_WGMMA_ACCUMULATORS_64
      : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
}

// D[64 x 256] += A[64 x 16] . B[16 x 256], A in registers (each warp's 16 rows as the m16n8k16 A fragment), B N-major
// in shared memory (its descriptor, imm-trans-b 1).
__device__ __forceinline__ void wgmma_m64n256k16_rs_n_major_b(float (&d)[128], const uint32_t (&a)[4],
                                                              uint64_t desc_b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, {%128, %129, %130, %131}, %132, p, 1, 1, 1;\n}\n"
      : UBERLM_WGMMA_ACCUMULATORS_128
      : UBERLM_WGMMA_A_FRAGMENT, "l"(desc_b), "r"(1));
}

#undef UBERLM_WGMMA_ACCUMULATORS_4_FROM
#undef UBERLM_WGMMA_ACCUMULATORS_16_FROM
#undef UBERLM_WGMMA_ACCUMULATORS_4
#undef UBERLM_WGMMA_ACCUMULATORS_8
#undef UBERLM_WGMMA_ACCUMULATORS_16
#undef UBERLM_WGMMA_ACCUMULATORS_32
#undef UBERLM_WGMMA_ACCUMULATORS_64
#undef UBERLM_WGMMA_ACCUMULATORS_128
#undef UBERLM_WGMMA_A_FRAGMENT

}  // namespace uberlm::cuda
