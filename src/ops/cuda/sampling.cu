#include "ops/cuda/kernel_util.cuh"
#include "ops/cuda/sampling.h"

namespace uberlm::cuda {

namespace {
constexpr int kThreads = 256;
constexpr int kValuesPerBlock = 8192;  // a 248k vocabulary row is spread over ~30 blocks

// (value, index) as one integer whose order is the argmax order: larger value first, then smaller index.
// The float maps to an unsigned that sorts as the float does; 0 means "nothing seen" (NaN is skipped,
// and every other float maps above 0).
__device__ __forceinline__ unsigned long long argmax_key(float value, int64_t index) {
  const unsigned bits = __float_as_uint(value);
  const unsigned ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (static_cast<unsigned long long>(ordered) << 32) | (0xFFFFFFFFu - static_cast<unsigned>(index));
}

__device__ __forceinline__ int32_t argmax_index(unsigned long long key) {
  return key == 0 ? 0 : static_cast<int32_t>(0xFFFFFFFFu - static_cast<unsigned>(key & 0xFFFFFFFFu));
}

__device__ __forceinline__ unsigned long long warp_max(unsigned long long key) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) key = max(key, __shfl_xor_sync(0xffffffffu, key, offset));
  return key;
}

// Grid (blocks per row, rows). Each block folds its slice of the row into the row's key with atomicMax
// (the maximum does not depend on arrival order, so the result is deterministic); the row's last block
// to arrive writes the token and zeroes the scratch for the next launch.
__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* logits, int64_t vocab, ArgmaxScratch* scratch,
                                                          int32_t* tokens) {
  begin_dependent_kernel();
  __shared__ unsigned long long warp_best[kThreads / 32];
  __shared__ bool last;
  const float* row = logits + static_cast<int64_t>(blockIdx.y) * vocab;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kValuesPerBlock;
  const int64_t end = begin + kValuesPerBlock < vocab ? begin + kValuesPerBlock : vocab;
  unsigned long long best = 0;
#pragma unroll 8
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const float value = row[i];
    if (value == value) best = max(best, argmax_key(value, i));
  }
  best = warp_max(best);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  ArgmaxScratch& state = scratch[blockIdx.y];
  if (warp == 0) {
    best = warp_max(lane < kThreads / 32 ? warp_best[lane] : 0);
    if (lane == 0) {
      atomicMax(&state.best_key, best);
      __threadfence();
      last = atomicAdd(&state.arrivals, 1u) == gridDim.x - 1;
    }
  }
  __syncthreads();
  if (last && threadIdx.x == 0) {
    __threadfence();
    tokens[blockIdx.y] = argmax_index(atomicExch(&state.best_key, 0ull));
    state.arrivals = 0;
  }
}
}  // namespace

cudaError_t launch_argmax(const float* logits, int64_t rows, int64_t vocab, ArgmaxScratch* scratch, int32_t* tokens,
                          cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (vocab <= 0 || vocab >= 0xFFFFFFFFll || rows > 65535) return cudaErrorInvalidValue;
  const dim3 grid(blocks_for(vocab, kValuesPerBlock), static_cast<unsigned>(rows));
  return launch_dependent(argmax_kernel, grid, kThreads, 0, stream, logits, vocab, scratch, tokens);
}

}  // namespace uberlm::cuda
