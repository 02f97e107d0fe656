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
}  // namespace

cudaError_t launch_add_rms_norm(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                                const float* weight, float offset, float eps, void* out, int64_t out_stride,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  return launch_dependent(add_rms_norm_kernel, static_cast<unsigned>(rows), kNormThreads, 0, stream, x, delta,
                          row_index, dim, weight, offset, eps, static_cast<__nv_bfloat16*>(out), out_stride);
}

}  // namespace uberlm::cuda
