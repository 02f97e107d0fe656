// Argument checks of the GEMV host API; the kernels are launched from gemv_nvfp4.cu and gemv_bf16.cu.
#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/gemv.h"

#include <cmath>
#include <string_view>

#include "core/error.h"
#include "ops/cuda/cuda_check.h"

namespace uberlm::cuda {

namespace {
bool aligned(const void* pointer, uintptr_t alignment) { return reinterpret_cast<uintptr_t>(pointer) % alignment == 0; }

void check_gemv_arguments(std::string_view op, int64_t n, int64_t k, const void* x, int64_t m, void* y,
                          DType y_dtype) {
  if (n <= 0 || k <= 0 || k % kGemvKMultiple != 0) {
    fail("{}: weight [{}, {}] not supported: N must be positive and K a positive multiple of {}", op, n, k,
         kGemvKMultiple);
  }
  if (m < 1 || m > kGemvMaxM) fail("{}: M = {} activation rows, supported 1..{}", op, m, kGemvMaxM);
  if (x == nullptr || !aligned(x, 16)) fail("{}: activations must be a 16-byte aligned device pointer", op);
  if (y == nullptr) fail("{}: null output pointer", op);
  if (y_dtype != DType::F32 && y_dtype != DType::BF16) {
    fail("{}: output dtype {} not supported (F32 or BF16)", op, dtype_name(y_dtype));
  }
}
}  // namespace

void gemv_nvfp4(const Nvfp4Weight& weight, const void* x, int64_t m, void* y, DType y_dtype, cudaStream_t stream) {
  check_gemv_arguments("gemv_nvfp4", weight.rows, weight.cols, x, m, y, y_dtype);
  if (weight.packed == nullptr || !aligned(weight.packed, 16) || weight.scales == nullptr ||
      !aligned(weight.scales, 2)) {
    fail("gemv_nvfp4: packed weights must be 16-byte aligned and scales 2-byte aligned device pointers");
  }
  if (!std::isfinite(weight.global_scale)) fail("gemv_nvfp4: global scale {} is not finite", weight.global_scale);
  CUDA_CHECK(detail::launch_gemv_nvfp4(weight, x, static_cast<int>(m), y, y_dtype == DType::BF16, stream));
}

void gemv_bf16(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
               cudaStream_t stream) {
  check_gemv_arguments("gemv_bf16", n, k, x, m, y, y_dtype);
  if (weight == nullptr || !aligned(weight, 16)) fail("gemv_bf16: weights must be a 16-byte aligned device pointer");
  CUDA_CHECK(detail::launch_gemv_bf16(weight, n, k, x, static_cast<int>(m), y, y_dtype == DType::BF16, stream));
}

}  // namespace uberlm::cuda
#endif
