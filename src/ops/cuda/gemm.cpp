#ifdef UBERLM_WITH_CUDA
#include "ops/cuda/gemm.h"

#include <cmath>
#include <limits>

#include "core/error.h"
#include "ops/cuda/alignment.h"
#include "ops/cuda/cuda_check.h"
#include "ops/cuda/dequantize_nvfp4.h"

namespace uberlm::cuda {

namespace {
void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail("cuBLAS {} failed: {} ({})", what, cublasGetStatusString(status), static_cast<int>(status));
  }
}

void check_gemm_arguments(const char* op, int64_t n, int64_t k, const void* x, int64_t m, const void* y,
                          DType y_dtype) {
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  if (n <= 0 || k <= 0 || m <= 0 || n > kIntMax || k > kIntMax || m > kIntMax) {
    fail("{}: y[{}, {}] = x[{}, {}] . W[{}, {}]^T: every size must be in 1..2^31-1", op, m, n, m, k, n, k);
  }
  if (k % 8 != 0) fail("{}: K = {} must be a multiple of 8 (16-byte bf16 rows)", op, k);
  if (x == nullptr || !aligned(x, 16) || y == nullptr || !aligned(y, 16)) {
    fail("{}: activations and output must be 16-byte aligned device pointers", op);
  }
  if (y_dtype != DType::F32 && y_dtype != DType::BF16) fail("{}: the output must be F32 or BF16", op);
}
}  // namespace

Gemm::Gemm(cudaStream_t stream) : stream_(stream) {
  check_cublas(cublasCreate(&handle_), "cublasCreate");
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  check_cublas(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

Gemm::Gemm(cudaStream_t stream, void* workspace, int64_t workspace_bytes) : Gemm(stream) {
  set_workspace(workspace, workspace_bytes);
}

// After the stream: cublasSetStream resets the handle to cuBLAS's own workspace pool.
void Gemm::set_workspace(void* workspace, int64_t workspace_bytes) {
  if (workspace == nullptr || workspace_bytes < kGemmWorkspaceBytes) {
    fail("Gemm: needs a device workspace of {} bytes, got {}", kGemmWorkspaceBytes, workspace_bytes);
  }
  check_cublas(cublasSetWorkspace(handle_, workspace, static_cast<size_t>(workspace_bytes)), "cublasSetWorkspace");
}

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

void Gemm::bf16(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
                float alpha) {
  check_gemm_arguments("gemm_bf16", n, k, x, m, y, y_dtype);
  if (weight == nullptr || !aligned(weight, 16)) fail("gemm_bf16: weights must be a 16-byte aligned device pointer");
  if (!std::isfinite(alpha)) fail("gemm_bf16: alpha {} is not finite", alpha);
  // Column-major view of the row-major product: y^T [n, m] = W [n, k] . x^T [k, m], where W is the
  // column-major [k, n] matrix transposed and x^T the column-major [k, m] matrix as stored.
  const float beta = 0.0f;
  check_cublas(cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                            static_cast<int>(k), &alpha, weight, CUDA_R_16BF, static_cast<int>(k), x, CUDA_R_16BF,
                            static_cast<int>(k), &beta, y, y_dtype == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F, static_cast<int>(n),
                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (bf16 x bf16, fp32 accumulation)");
}

void Gemm::nvfp4(const Nvfp4Weight& weight, void* scratch, int64_t scratch_elements, const void* x, int64_t m,
                 void* y, DType y_dtype) {
  check_gemm_arguments("gemm_nvfp4", weight.rows, weight.cols, x, m, y, y_dtype);
  dequantize(weight, scratch, scratch_elements, stream_);
  nvfp4_dequantized(weight, scratch, x, m, y, y_dtype);
}

void Gemm::dequantize(const Nvfp4Weight& weight, void* scratch, int64_t scratch_elements, cudaStream_t stream) {
  if (weight.cols % kNvfp4BlockSize != 0) fail("gemm_nvfp4: K = {} is not a multiple of 16", weight.cols);
  if (weight.code_order != Nvfp4CodeOrder::GemvTiled) {
    fail("gemm_nvfp4: codes must be in the GEMV's tiled order (tile_nvfp4_codes_for_gemv)");
  }
  if (weight.packed == nullptr || !aligned(weight.packed, 8) || weight.scales == nullptr) {
    fail("gemm_nvfp4: packed weights must be an 8-byte aligned device pointer, scales non-null");
  }
  if (scratch == nullptr || !aligned(scratch, 32) || scratch_elements < weight.rows * weight.cols) {
    fail("gemm_nvfp4: the bf16 scratch buffer ({} elements) is smaller than the weight [{}, {}] or misaligned",
         scratch_elements, weight.rows, weight.cols);
  }
  CUDA_CHECK(launch_dequantize_nvfp4_bf16(weight, scratch, stream));
}

void Gemm::nvfp4_dequantized(const Nvfp4Weight& weight, const void* scratch, const void* x, int64_t m, void* y,
                             DType y_dtype) {
  bf16(scratch, weight.rows, weight.cols, x, m, y, y_dtype, weight.global_scale);
}

}  // namespace uberlm::cuda
#endif
