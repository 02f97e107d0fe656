#include "ops/cuda/rms_norm.cuh"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

namespace {
// Decode norms one row of ~5k values each: a wide block keeps each thread's share small, since the
// launch is latency-bound (one block per row).
constexpr int kNormThreads = 1024;

// One block per output row. The residual add and the sum of squares share one pass over the row; the
// second pass (normalise and store) reads the row back from L1.
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(float* x, const float* delta, const int32_t* row_index, int64_t dim, const float* weight,
                        float offset, float eps, __nv_bfloat16* out, int64_t out_stride) {
  begin_dependent_kernel();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  float* row = x + (row_index ? static_cast<int64_t>(row_index[r]) : r) * dim;
  float sum = 0.0f;
  if (delta) {
    const float* d = delta + r * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = row[i] + d[i];  // x = x + mixer(x)
      row[i] = v;
      sum += v * v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) sum += row[i] * row[i];
  }
  const float scale = inverse_rms(block_sum(sum, scratch), dim, eps);
  __nv_bfloat16* o = out + r * out_stride;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __float2bfloat16(row[i] * scale * (offset + weight[i]));
}

// One warp per (token, head) row.
__global__ void gated_rms_norm_kernel(const float* x, const float* z, int64_t z_stride, int64_t rows, int heads,
                                      int dim, const float* weight, float eps, __nv_bfloat16* out,
                                      int64_t out_stride) {
  begin_dependent_kernel();
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t t = r / heads, h = r % heads;
  const float* in = x + r * dim;
  const float* gate = z + t * z_stride + h * dim;
  __nv_bfloat16* o = out + t * out_stride + h * dim;
  const float scale = warp_inverse_rms(in, dim, eps);
  for (int i = threadIdx.x % 32; i < dim; i += 32) {
    o[i] = __float2bfloat16(weight[i] * (in[i] * scale) * siluf_exact(gate[i]));  // (w * n) * silu(z)
  }
}
}  // namespace

cudaError_t launch_add_rms_norm(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                                const float* weight, float offset, float eps, void* out, int64_t out_stride,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return launch_dependent(add_rms_norm_kernel, static_cast<unsigned>(rows), kNormThreads, 0, stream, x, delta,
                          row_index, dim, weight, offset, eps, static_cast<__nv_bfloat16*>(out), out_stride);
}

cudaError_t launch_gated_rms_norm(const float* x, const float* z, int64_t z_stride, int64_t tokens, int heads,
                                  int dim, const float* weight, float eps, void* out, int64_t out_stride,
                                  cudaStream_t stream) {
  const int64_t rows = tokens * heads;
  if (rows == 0) return cudaSuccess;
  constexpr int kWarps = 4;
  return launch_dependent(gated_rms_norm_kernel, blocks_for(rows, kWarps), kWarps * 32, 0, stream, x, z, z_stride, rows,
                          heads, dim, weight, eps, static_cast<__nv_bfloat16*>(out), out_stride);
}

}  // namespace uberlm::cuda
