#pragma once
// Small device helpers shared by the op kernels: warp and block reductions, bf16 stores, launch sizes.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace uberlm::cuda {

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

__device__ __forceinline__ float warp_max(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 floats of shared memory; the call synchronises the block.
__device__ __forceinline__ float block_sum(float value, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  value = warp_sum(value);
  __syncthreads();
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  value = lane < warps ? scratch[lane] : 0.0f;
  return warp_sum(value);
}

__device__ __forceinline__ float sigmoidf_exact(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float siluf_exact(float x) { return x * sigmoidf_exact(x); }
// silu(gate) * up rounded to bf16: the SwiGLU kernel's and the fused gate/up GEMV epilogue's one formula,
// so that both give the same bits.
__device__ __forceinline__ __nv_bfloat16 swiglu_bf16(float gate, float up) {
  return __float2bfloat16(siluf_exact(gate) * up);
}
// torch softplus, beta 1, threshold 20.
__device__ __forceinline__ float softplusf_exact(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// Programmatic dependent launch (Hopper): the decode step's kernels are launched with
// launch_dependent, which lets the GPU schedule a kernel's blocks while the previous kernel of the stream
// drains instead of after it completed (~900 launches a step, each gap otherwise idle). Such a kernel
// calls begin_dependent_kernel() before it touches memory that earlier kernels write; only constant
// inputs (weights) may be read before it, and memory last written before the previous kernel (the
// per-forward metadata; a Gated DeltaNet layer's states, written by that layer in an earlier forward):
// begin_dependent_kernel lets the next kernel start only after its own wait, so once a kernel runs,
// everything before the previous one has completed. Without the launch attribute both calls return at once.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Lets the next kernel's blocks be scheduled once every block of this one has started.
__device__ __forceinline__ void allow_next_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void begin_dependent_kernel() {
  wait_for_previous_kernel();
  allow_next_kernel();
}

// The wait of a device function shared by a standalone kernel and a persistent one (the `wait_for_inputs`
// argument of add_rms_norm_row, gemv_block and gated_delta_net_block). In a standalone kernel it waits for the
// previous kernel, and lets the next one start (BeginDependentKernel) or not (WaitForPreviousKernel, for kernels
// that let it start at their beginning).
struct BeginDependentKernel {
  __device__ __forceinline__ void operator()() const { begin_dependent_kernel(); }
};
struct WaitForPreviousKernel {
  __device__ __forceinline__ void operator()() const { wait_for_previous_kernel(); }
};

// launch_dependent with at most one more launch attribute (`extra`, `extra_count` 0 or 1).
template <class... Params, class... Args>
cudaError_t launch_dependent_with(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                                  cudaStream_t stream, const cudaLaunchAttribute* extra, unsigned extra_count,
                                  Args... args) {
  cudaLaunchAttribute attributes[2] = {};
  attributes[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attributes[0].val.programmaticStreamSerializationAllowed = 1;
  if (extra_count > 0) attributes[1] = *extra;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = 1 + extra_count;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

template <class... Params, class... Args>
cudaError_t launch_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                             Args... args) {
  return launch_dependent_with(kernel, grid, block, shared_bytes, stream, nullptr, 0, args...);
}

// launch_dependent of a kernel whose blocks form thread-block clusters of `cluster` blocks (Hopper), which
// share their shared memory (cooperative_groups::this_cluster()).
template <class... Params, class... Args>
cudaError_t launch_dependent_clusters(void (*kernel)(Params...), dim3 grid, dim3 block, dim3 cluster,
                                      size_t shared_bytes, cudaStream_t stream, Args... args) {
  cudaLaunchAttribute cluster_shape{};
  cluster_shape.id = cudaLaunchAttributeClusterDimension;
  cluster_shape.val.clusterDim.x = cluster.x;
  cluster_shape.val.clusterDim.y = cluster.y;
  cluster_shape.val.clusterDim.z = cluster.z;
  return launch_dependent_with(kernel, grid, block, shared_bytes, stream, &cluster_shape, 1, args...);
}

// Lets `kernel` take `bytes` of dynamic shared memory: above the default 48 KiB that needs an opt-in, which
// CUDA keeps per device, so it is made at every launch (a host call of about a microsecond) rather than once
// per process, which would leave the other GPUs of a tensor-parallel run without it.
template <class... Params>
cudaError_t allow_dynamic_shared_memory(void (*kernel)(Params...), size_t bytes) {
  if (bytes <= (size_t{48} << 10)) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

inline unsigned blocks_for(int64_t items, int threads) {
  return static_cast<unsigned>((items + threads - 1) / threads);
}

}  // namespace uberlm::cuda
