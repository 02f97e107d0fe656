#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/sampling.h"

namespace uberlm::cuda {

namespace {
constexpr int kThreads = 512;

// Keeps the larger value, the smaller index on ties; NaN never wins.
__device__ __forceinline__ void better(float& value, int& index, float other_value, int other_index) {
  if (other_value > value || (other_value == value && other_index < index)) {
    value = other_value;
    index = other_index;
  }
}

// One block per row.
__global__ void argmax_kernel(const float* logits, int64_t vocab, int32_t* tokens) {
  begin_dependent_kernel();
  __shared__ float values[32];
  __shared__ int indices[32];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  float best = -INFINITY;
  int best_index = INT32_MAX;
  for (int64_t i = threadIdx.x; i < vocab; i += blockDim.x) better(best, best_index, row[i], static_cast<int>(i));
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    better(best, best_index, __shfl_xor_sync(0xffffffffu, best, offset),
           __shfl_xor_sync(0xffffffffu, best_index, offset));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = best_index;
  }
  __syncthreads();
  if (warp != 0) return;
  best = lane < blockDim.x / 32 ? values[lane] : -INFINITY;
  best_index = lane < blockDim.x / 32 ? indices[lane] : INT32_MAX;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    better(best, best_index, __shfl_xor_sync(0xffffffffu, best, offset),
           __shfl_xor_sync(0xffffffffu, best_index, offset));
  }
  if (lane == 0) tokens[blockIdx.x] = best_index == INT32_MAX ? 0 : best_index;
}
}  // namespace

cudaError_t launch_argmax(const float* logits, int64_t rows, int64_t vocab, int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return launch_dependent(argmax_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, logits, vocab, tokens);
}

}  // namespace uberlm::cuda
