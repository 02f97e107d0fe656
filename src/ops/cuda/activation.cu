#include "ops/cuda/activation.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
constexpr int kThreads = 256;

// out[r, c] = silu(gate[r, c]) * up[r, c] in bf16, a thread per element.
__global__ void swiglu_kernel(const float* gate, const float* up, int64_t rows, int64_t cols, __nv_bfloat16* out,
                              int64_t out_stride) {
  begin_dependent_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, col = i % cols;
  out[r * out_stride + col] = swiglu_bf16(gate[i], up[i]);
}

// The same for rows of whole 16-byte quads (cols, out_stride multiples of 4, aligned pointers): a thread per
// 4 columns, a grid row per matrix row (rows past the grid's height loop), no 64-bit divisions.
__global__ void swiglu_quads_kernel(const float4* gate, const float4* up, int64_t rows, int64_t quads,
                                    __nv_bfloat16* out, int64_t out_stride) {
  begin_dependent_kernel();
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= quads) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const float4 g = gate[r * quads + q], u = up[r * quads + q];
    const __nv_bfloat16 values[4] = {swiglu_bf16(g.x, u.x), swiglu_bf16(g.y, u.y), swiglu_bf16(g.z, u.z),
                                     swiglu_bf16(g.w, u.w)};
    *reinterpret_cast<uint2*>(out + r * out_stride + 4 * q) = *reinterpret_cast<const uint2*>(values);
  }
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
  if (cols % 4 == 0 && out_stride % 4 == 0 && aligned(gate, 16) && aligned(up, 16) && aligned(out, 8)) {
    const int64_t quads = cols / 4;
    const dim3 grid(blocks_for(quads, kThreads), static_cast<unsigned>(rows < 65535 ? rows : 65535));
    return launch_dependent(swiglu_quads_kernel, grid, kThreads, 0, stream, reinterpret_cast<const float4*>(gate),
                            reinterpret_cast<const float4*>(up), rows, quads, static_cast<__nv_bfloat16*>(out),
                            out_stride);
  }
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
