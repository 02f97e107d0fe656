#include "ops/cuda/activation.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
constexpr int kThreads = 256;

__global__ void swiglu_kernel(const float* gate, const float* up, int64_t rows, int64_t cols, __nv_bfloat16* out,
                              int64_t out_stride) {
  begin_dependent_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, col = i % cols;
  out[r * out_stride + col] = swiglu_bf16(gate[i], up[i]);
}

__global__ void add_bias_kernel(float* y, const float* bias, int64_t rows, int64_t cols) {
  begin_dependent_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < rows * cols) y[i] += bias[i % cols];
}

__global__ void add_inplace_kernel(float* x, const float* delta, int64_t count) {
  begin_dependent_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) x[i] += delta[i];
}
}  // namespace

cudaError_t launch_swiglu(const float* gate, const float* up, int64_t rows, int64_t cols, void* out,
                          int64_t out_stride, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  return launch_dependent(swiglu_kernel, blocks_for(rows * cols, kThreads), kThreads, 0, stream, gate, up, rows, cols,
                          static_cast<__nv_bfloat16*>(out), out_stride);
}

cudaError_t launch_add_bias(float* y, const float* bias, int64_t rows, int64_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  return launch_dependent(add_bias_kernel, blocks_for(rows * cols, kThreads), kThreads, 0, stream, y, bias, rows, cols);
}

cudaError_t launch_add_inplace(float* x, const float* delta, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return launch_dependent(add_inplace_kernel, blocks_for(count, kThreads), kThreads, 0, stream, x, delta, count);
}

}  // namespace uberlm::cuda
