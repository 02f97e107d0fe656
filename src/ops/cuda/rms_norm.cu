#include "ops/cuda/alignment.h"
#include "ops/cuda/rms_norm.cuh"
#include "ops/cuda/rms_norm.h"

namespace uberlm::cuda {

namespace {
// One block per output row, its body add_rms_norm_row (rms_norm.cuh).
template <bool kAddDelta, int kWidth>
__global__ void __launch_bounds__(kNormThreads<kWidth>)
    add_rms_norm_kernel(float* x, const float* delta, const int32_t* row_index, int64_t dim, const float* weight,
                        float offset, float eps, __nv_bfloat16* out, int64_t out_stride) {
  add_rms_norm_row<kAddDelta, kWidth>(x, delta, row_index, blockIdx.x, dim, weight, offset, eps, out, out_stride,
                                      BeginDependentKernel{});
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
