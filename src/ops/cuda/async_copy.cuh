#pragma once
// Producer/consumer building blocks of Hopper kernels that feed shared memory by the bulk-copy engine: mbarriers
// (also at cluster scope), tensor (TMA) box copies and plain bulk copies that complete on an mbarrier, distributed
// shared-memory stores, and the barrier of a block's consumer warps (a producer warp never joins it).
#include <cuda.h>

#include <cstdint>

namespace uberlm::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void mbarrier_init(uint64_t* barrier, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(shared_address(barrier)), "r"(count) : "memory");
}

// Makes the initialised barriers visible to the cluster's other blocks and to the bulk-copy engine.
__device__ __forceinline__ void fence_mbarrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(shared_address(barrier)) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_bytes(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(shared_address(barrier)), "r"(bytes)
               : "memory");
}

// Arrives on the barrier at the same place in the shared memory of cluster block `rank`, releasing this
// thread's earlier writes (and reads) at cluster scope.
__device__ __forceinline__ void mbarrier_arrive_in_block(uint64_t* barrier, uint32_t rank) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(shared_address(barrier)), "r"(rank));
  asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];\n" ::"r"(remote) : "memory");
}

// Waits for the phase of `parity` to complete; with kCluster, acquiring what other blocks of the cluster
// released into it.
template <bool kCluster>
__device__ __forceinline__ void mbarrier_wait(const uint64_t* barrier, uint32_t parity) {
  const uint32_t address = shared_address(barrier);
  uint32_t done = 0;
  while (!done) {
    if constexpr (kCluster) {
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n"
          " selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(address), "r"(parity)
          : "memory");
    } else {
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(address), "r"(parity)
          : "memory");
    }
  }
}

// The box of `map` at (x bytes, y rows) into this block's shared memory by the tensor-copy engine;
// completion counts the box's bytes (zeros outside the matrix included) on `barrier`.
__device__ __forceinline__ void tensor_copy_to_shared(void* shared, const CUtensorMap& map, int x, int y,
                                                      uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(shared_address(shared)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(x), "r"(y), "r"(shared_address(barrier))
      : "memory");
}

// `bytes` (a multiple of 16, 16-byte aligned at both ends) from global memory into this block's shared memory
// by the bulk-copy engine; completion counts the bytes on `barrier`.
__device__ __forceinline__ void bulk_copy_to_shared(void* shared, const void* global, uint32_t bytes,
                                                    uint64_t* barrier) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   shared_address(shared)),
               "l"(global), "r"(bytes), "r"(shared_address(barrier))
               : "memory");
}

__device__ __forceinline__ void store_in_block(float* local, uint32_t rank, float value) {
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(shared_address(local)), "r"(rank));
  asm volatile("st.shared::cluster.f32 [%0], %1;\n" ::"r"(remote), "f"(value) : "memory");
}

__device__ __forceinline__ void cluster_sync() {
  asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
}

// The consumer warps' barrier (the producer warp never joins it).
__device__ __forceinline__ void consumer_sync(int consumer_threads) {
  asm volatile("bar.sync 1, %0;\n" ::"r"(consumer_threads) : "memory");
}

}  // namespace uberlm::cuda
