#include "ops/cuda/activation.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/kernel_util.cuh"

namespace uberlm::cuda {

namespace {
constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// 16 bytes of consecutive inputs of type T (4 fp32 or 8 bf16 values) in one load, and their bf16 outputs.
template <class T>
struct alignas(16) Vec16 {
  static constexpr int kValues = 16 / sizeof(T);
  T v[kValues];
};
template <int kValues>
struct alignas(2 * kValues) Bf16Values {
  __nv_bfloat16 v[kValues];
};

// out[r, c] = silu(gate[r, c]) * up[r, c] in bf16, a thread per element; T: float or __nv_bfloat16.
template <class T>
__global__ void swiglu_kernel(const T* gate, const T* up, int64_t rows, int64_t cols, __nv_bfloat16* out,
                              int64_t out_stride) {
  begin_dependent_kernel();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * cols) return;
  const int64_t r = i / cols, col = i % cols;
  out[r * out_stride + col] = swiglu_bf16(to_float(gate[i]), to_float(up[i]));
}

// The same for rows of whole 16-byte vectors (cols and out_stride multiples of Vec16<T>::kValues, aligned
// pointers): a thread per vector, a grid row per matrix row (rows past the grid's height loop), no 64-bit
// divisions.
template <class T>
__global__ void swiglu_vectors_kernel(const Vec16<T>* gate, const Vec16<T>* up, int64_t rows, int64_t vectors,
                                      __nv_bfloat16* out, int64_t out_stride) {
  constexpr int kValues = Vec16<T>::kValues;
  begin_dependent_kernel();
  const int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q >= vectors) return;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const Vec16<T> g = gate[r * vectors + q], u = up[r * vectors + q];
    Bf16Values<kValues> values;
#pragma unroll
    for (int i = 0; i < kValues; ++i) values.v[i] = swiglu_bf16(to_float(g.v[i]), to_float(u.v[i]));
    *reinterpret_cast<Bf16Values<kValues>*>(out + r * out_stride + kValues * q) = values;
  }
}

template <class T>
cudaError_t launch_swiglu_of(const T* gate, const T* up, int64_t rows, int64_t cols, void* out, int64_t out_stride,
                             cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  constexpr int kValues = Vec16<T>::kValues;
  if (cols % kValues == 0 && out_stride % kValues == 0 && aligned(gate, 16) && aligned(up, 16) &&
      aligned(out, 2 * kValues)) {
    const int64_t vectors = cols / kValues;
    const dim3 grid(blocks_for(vectors, kThreads), static_cast<unsigned>(rows < 65535 ? rows : 65535));
    return launch_dependent(swiglu_vectors_kernel<T>, grid, kThreads, 0, stream,
                            reinterpret_cast<const Vec16<T>*>(gate), reinterpret_cast<const Vec16<T>*>(up), rows,
                            vectors, static_cast<__nv_bfloat16*>(out), out_stride);
  }
  return launch_dependent(swiglu_kernel<T>, blocks_for(rows * cols, kThreads), kThreads, 0, stream, gate, up, rows, cols,
                          static_cast<__nv_bfloat16*>(out), out_stride);
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

cudaError_t launch_swiglu(const void* gate, const void* up, DType in_dtype, int64_t rows, int64_t cols, void* out,
                          int64_t out_stride, cudaStream_t stream) {
  switch (in_dtype) {
    case DType::F32:
      return launch_swiglu_of(static_cast<const float*>(gate), static_cast<const float*>(up), rows, cols, out,
                              out_stride, stream);
    case DType::BF16:
      return launch_swiglu_of(static_cast<const __nv_bfloat16*>(gate), static_cast<const __nv_bfloat16*>(up), rows,
                              cols, out, out_stride, stream);
    default: return cudaErrorInvalidValue;
  }
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
