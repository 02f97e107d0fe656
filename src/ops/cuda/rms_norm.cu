#include "ops/cuda/alignment.h"
#include "ops/cuda/rms_norm.cuh"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

namespace {
// A thread's loads of one row: kWidth consecutive values each, 16-byte quads (kWidth 4) where the row's length
// and pointers allow it (every model's hidden size), single values (kWidth 1) otherwise. Either way a thread
// makes kNormLoadsPerThread loads, so a block has 1024 threads for single values (a decode step's one row is
// latency-bound: a wide block keeps each thread's share small) and 256 for quads (8 rows share an SM; with
// 1024-thread blocks a prompt's thousands of rows ran ~8 waves of load latency and block barriers, 2.3 TB/s).
// The width depends on the shapes and pointers only, never on the row count, and the sums run in the same
// order at both widths: a row's values are the same bits in a batch of any size.
constexpr int kNormLoadsPerThread = 8;
template <int kWidth>
inline constexpr int kNormThreads = kRmsNormMaxDim / kWidth / kNormLoadsPerThread;

template <int kWidth>
struct alignas(4 * kWidth) FloatLanes {
  float v[kWidth];
};
template <int kWidth>
struct alignas(2 * kWidth) Bf16Lanes {
  __nv_bfloat16 v[kWidth];
};

// One block per output row. The norm weight is constant, so it is loaded before the wait for the previous
// kernel: after the wait comes one round trip (x and delta, loaded together from clamped indices) instead
// of two. The residual add and the sum of squares share that pass, and the row stays in registers for the
// store. kAddDelta is a template parameter so that no load sits under a branch (it would be waited for there).
template <bool kAddDelta, int kWidth>
__global__ void __launch_bounds__(kNormThreads<kWidth>)
    add_rms_norm_kernel(float* x, const float* delta, const int32_t* row_index, int64_t dim, const float* weight,
                        float offset, float eps, __nv_bfloat16* out, int64_t out_stride) {
  using Lanes = FloatLanes<kWidth>;
  constexpr int kThreads = kNormThreads<kWidth>;
  const int t = threadIdx.x, loads = static_cast<int>(dim / kWidth);
  Lanes scales[kNormLoadsPerThread], values[kNormLoadsPerThread];
  const Lanes* w = reinterpret_cast<const Lanes*>(weight);
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads;
    const Lanes weights = w[q < loads ? q : loads - 1];
#pragma unroll
    for (int c = 0; c < kWidth; ++c) scales[j].v[c] = offset + weights.v[c];
  }
  begin_dependent_kernel();
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  Lanes* row = reinterpret_cast<Lanes*>(x + (row_index ? static_cast<int64_t>(row_index[r]) : r) * dim);
  const Lanes* d = reinterpret_cast<const Lanes*>(delta + r * dim);
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads, clamped = q < loads ? q : loads - 1;
    Lanes value = row[clamped];
    if constexpr (kAddDelta) {  // x = x + mixer(x)
      const Lanes added = d[clamped];
#pragma unroll
      for (int c = 0; c < kWidth; ++c) value.v[c] += added.v[c];
    }
    values[j] = q < loads ? value : Lanes{};
  }
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads;
    if (kAddDelta && q < loads) row[q] = values[j];
#pragma unroll
    for (int c = 0; c < kWidth; ++c) sum += values[j].v[c] * values[j].v[c];
  }
  const float scale = inverse_rms(block_sum(sum, scratch), dim, eps);
  Bf16Lanes<kWidth>* o = reinterpret_cast<Bf16Lanes<kWidth>*>(out + r * out_stride);
#pragma unroll
  for (int j = 0; j < kNormLoadsPerThread; ++j) {
    const int q = t + j * kThreads;
    if (q >= loads) continue;
    Bf16Lanes<kWidth> normed;
#pragma unroll
    for (int c = 0; c < kWidth; ++c) normed.v[c] = __float2bfloat16(values[j].v[c] * scale * scales[j].v[c]);
    o[q] = normed;
  }
}

template <int kWidth>
cudaError_t launch_width(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                         const float* weight, float offset, float eps, void* out, int64_t out_stride,
                         cudaStream_t stream) {
  const auto kernel = delta ? add_rms_norm_kernel<true, kWidth> : add_rms_norm_kernel<false, kWidth>;
  return launch_dependent(kernel, static_cast<unsigned>(rows), kNormThreads<kWidth>, 0, stream, x, delta, row_index,
                          dim, weight, offset, eps, static_cast<__nv_bfloat16*>(out), out_stride);
}
}  // namespace

cudaError_t launch_add_rms_norm(float* x, const float* delta, const int32_t* row_index, int64_t rows, int64_t dim,
                                const float* weight, float offset, float eps, void* out, int64_t out_stride,
                                cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (dim < 1 || dim > kRmsNormMaxDim) return cudaErrorInvalidValue;
  const bool quads = dim % 4 == 0 && out_stride % 4 == 0 && aligned(x, 16) && (!delta || aligned(delta, 16)) &&
                     aligned(weight, 16) && aligned(out, 8);
  return quads ? launch_width<4>(x, delta, row_index, rows, dim, weight, offset, eps, out, out_stride, stream)
               : launch_width<1>(x, delta, row_index, rows, dim, weight, offset, eps, out, out_stride, stream);
}

}  // namespace uberlm::cuda
