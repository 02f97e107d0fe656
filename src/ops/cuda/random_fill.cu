#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/random_fill.h"

namespace uberlm::cuda {

namespace {
constexpr int kThreads = 256;

// splitmix64 of (seed, index).
__device__ __forceinline__ uint64_t hash(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + index + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) from the top 24 bits.
__device__ __forceinline__ float unit(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }

__global__ void fill_bf16_kernel(__nv_bfloat16* out, int64_t count, uint64_t seed, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float value = (2.0f * unit(hash(seed, i)) - 1.0f) * scale;
    if (__float2bfloat16(value) == __float2bfloat16(0.0f)) value = scale * 0.5f;
    out[i] = __float2bfloat16(value);
  }
}

__global__ void fill_f32_kernel(float* out, int64_t count, uint64_t seed, float low, float high) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = low + (high - low) * unit(hash(seed, i));
  }
}

__global__ void fill_bytes_kernel(uint8_t* out, int64_t count, uint64_t seed, uint8_t and_mask, uint8_t or_mask) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<uint8_t>((hash(seed, i) >> 32) & and_mask) | or_mask;
  }
}

unsigned grid_for(int64_t count) { return static_cast<unsigned>(count < 4096 * kThreads ? blocks_for(count, kThreads) : 4096); }
}  // namespace

cudaError_t launch_fill_random_bf16(void* out, int64_t count, uint64_t seed, float scale, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  fill_bf16_kernel<<<grid_for(count), kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(out), count, seed, scale);
  return cudaGetLastError();
}

cudaError_t launch_fill_random_f32(float* out, int64_t count, uint64_t seed, float low, float high,
                                   cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  fill_f32_kernel<<<grid_for(count), kThreads, 0, stream>>>(out, count, seed, low, high);
  return cudaGetLastError();
}

cudaError_t launch_fill_random_bytes(uint8_t* out, int64_t count, uint64_t seed, uint8_t and_mask, uint8_t or_mask,
                                     cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  fill_bytes_kernel<<<grid_for(count), kThreads, 0, stream>>>(out, count, seed, and_mask, or_mask);
  return cudaGetLastError();
}

}  // namespace uberlm::cuda
