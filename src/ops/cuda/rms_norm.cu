#include "ops/cuda/alignment.h"
#include "ops/cuda/rms_norm.cuh"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

namespace {
// Rows whose length or pointers rule out 16-byte quads (add_rms_norm_quads_kernel below takes the others): a
// wide block keeps each thread's share small, since a decode step's launch is latency-bound (one block per row).
constexpr int kNormThreads = 1024;
constexpr int kNormValuesPerThread = 8;  // rows of up to kRmsNormMaxDim values
static_assert(kNormThreads * kNormValuesPerThread == kRmsNormMaxDim);

// One block per output row. The norm weight is constant, so it is loaded before the wait for the previous
// kernel: after the wait comes one round trip (x and delta, loaded together from clamped indices) instead
// of two. The residual add and the sum of squares share that pass, and the row stays in registers for the
// store. kAddDelta is a template parameter so that no load sits under a branch (it would be waited for there).
template <bool kAddDelta>
__global__ void __launch_bounds__(kNormThreads)
    add_rms_norm_kernel(float* x, const float* delta, const int32_t* row_index, int64_t dim, const float* weight,
                        float offset, float eps, __nv_bfloat16* out, int64_t out_stride) {
  const int t = threadIdx.x;
  float scales[kNormValuesPerThread], values[kNormValuesPerThread];
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads;
    scales[j] = offset + weight[i < dim ? i : dim - 1];
  }
  begin_dependent_kernel();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  float* row = x + (row_index ? static_cast<int64_t>(row_index[r]) : r) * dim;
  const float* d = delta + r * dim;
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads, clamped = i < dim ? i : dim - 1;
    float value = row[clamped];
    if constexpr (kAddDelta) value += d[clamped];  // x = x + mixer(x)
    values[j] = i < dim ? value : 0.0f;
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads;
    if (kAddDelta && i < dim) row[i] = values[j];
    sum += values[j] * values[j];
  }
  const float scale = inverse_rms(block_sum(sum, scratch), dim, eps);
  __nv_bfloat16* o = out + r * out_stride;
#pragma unroll
  for (int j = 0; j < kNormValuesPerThread; ++j) {
    const int64_t i = t + int64_t{j} * kNormThreads;
    if (i < dim) o[i] = __float2bfloat16(values[j] * scale * scales[j]);
  }
}

// The same op over 16-byte quads, for rows of a multiple of 4 values with aligned pointers (every model's
// hidden size): 256 threads a row, so that 8 rows share an SM (the scalar kernel's 1024-thread blocks put 2 on
// it, and a prompt's thousands of rows then ran ~8 waves of load latency and block barriers, 2.3 TB/s).
// The choice depends on the shapes and pointers only, never on the row count: a row's values are the same
// bits in a batch of any size.
constexpr int kQuadThreads = 256;
constexpr int kQuadsPerThread = kRmsNormMaxDim / 4 / kQuadThreads;

__device__ __forceinline__ float4 add4(float4 a, float4 b) { return {a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w}; }

template <bool kAddDelta>
__global__ void __launch_bounds__(kQuadThreads)
    add_rms_norm_quads_kernel(float* x, const float* delta, const int32_t* row_index, int64_t dim, const float* weight,
                              float offset, float eps, __nv_bfloat16* out, int64_t out_stride) {
  const int t = threadIdx.x, quads = static_cast<int>(dim / 4);
  float4 scales[kQuadsPerThread], values[kQuadsPerThread];
  const float4* w = reinterpret_cast<const float4*>(weight);
#pragma unroll
  for (int j = 0; j < kQuadsPerThread; ++j) {
    const int q = t + j * kQuadThreads;
    scales[j] = add4(make_float4(offset, offset, offset, offset), w[q < quads ? q : quads - 1]);
  }
  begin_dependent_kernel();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  float4* row = reinterpret_cast<float4*>(x + (row_index ? static_cast<int64_t>(row_index[r]) : r) * dim);
  const float4* d = reinterpret_cast<const float4*>(delta + r * dim);
#pragma unroll
  for (int j = 0; j < kQuadsPerThread; ++j) {
    const int q = t + j * kQuadThreads, clamped = q < quads ? q : quads - 1;
    float4 value = row[clamped];
    if constexpr (kAddDelta) value = add4(value, d[clamped]);  // x = x + mixer(x)
    values[j] = q < quads ? value : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kQuadsPerThread; ++j) {
    const int q = t + j * kQuadThreads;
    if (kAddDelta && q < quads) row[q] = values[j];
    sum += values[j].x * values[j].x;
    sum += values[j].y * values[j].y;
    sum += values[j].z * values[j].z;
    sum += values[j].w * values[j].w;
  }
  const float scale = inverse_rms(block_sum(sum, scratch), dim, eps);
  uint2* o = reinterpret_cast<uint2*>(out + r * out_stride);
#pragma unroll
  for (int j = 0; j < kQuadsPerThread; ++j) {
    const int q = t + j * kQuadThreads;
    if (q >= quads) continue;
    const float4 v = values[j], s = scales[j];
    const __nv_bfloat162 low = __halves2bfloat162(__float2bfloat16(v.x * scale * s.x), __float2bfloat16(v.y * scale * s.y));
    const __nv_bfloat162 high = __halves2bfloat162(__float2bfloat16(v.z * scale * s.z), __float2bfloat16(v.w * scale * s.w));
    o[q] = make_uint2(*reinterpret_cast<const uint32_t*>(&low), *reinterpret_cast<const uint32_t*>(&high));
  }
}
}  // namespace

cudaError_t launch_add_rms_norm(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                                const float* weight, float offset, float eps, void* out, int64_t out_stride,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (dim < 1 || dim > kRmsNormMaxDim) return cudaErrorInvalidValue;
  const bool quads = dim % 4 == 0 && out_stride % 4 == 0 && aligned(x, 16) && (!delta || aligned(delta, 16)) &&
                     aligned(weight, 16) && aligned(out, 8);
  if (quads) {
    const auto kernel = delta ? add_rms_norm_quads_kernel<true> : add_rms_norm_quads_kernel<false>;
    return launch_dependent(kernel, static_cast<unsigned>(rows), kQuadThreads, 0, stream, x, delta, row_index, dim,
                            weight, offset, eps, static_cast<__nv_bfloat16*>(out), out_stride);
  }
  const auto kernel = delta ? add_rms_norm_kernel<true> : add_rms_norm_kernel<false>;
  return launch_dependent(kernel, static_cast<unsigned>(rows), kNormThreads, 0, stream, x, delta, row_index, dim,
                          weight, offset, eps, static_cast<__nv_bfloat16*>(out), out_stride);
}

}  // namespace uberlm::cuda
