#pragma once
// Large-M linear layers (prefill) on tensor cores through cuBLAS: y[M, N] = x[M, K] bf16 . W^T with bf16 inputs
// and fp32 accumulation, written as fp32 or rounded to bf16 (y_dtype). NVFP4 weights are first dequantised into a bf16 scratch buffer the
// caller planned (dequantize_nvfp4.h: e2m1 * e4m3, exact in bf16), and their global scale is cuBLAS's
// alpha. The small-M path is gemv.h; the caller picks one by M. Bad shapes or pointers throw
// uberlm::Error before anything is queued; a cuBLAS failure throws with its status.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/nvfp4.h"

namespace uberlm::cuda {

// cuBLAS's recommended workspace on Hopper; with it given, cuBLAS allocates nothing while running.
inline constexpr int64_t kGemmWorkspaceBytes = int64_t{32} << 20;

class Gemm {
 public:
  // Work is queued on `stream`; `workspace` holds kGemmWorkspaceBytes device bytes for cuBLAS.
  Gemm(cudaStream_t stream, void* workspace, int64_t workspace_bytes);
  // The handle alone (cuBLAS takes device memory of its own here, so a caller that plans memory makes it
  // first); set_workspace before the first product.
  explicit Gemm(cudaStream_t stream);
  void set_workspace(void* workspace, int64_t workspace_bytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // weight: bf16 [n, k]; x: bf16 [m, k]; y: [m, n] of y_dtype (F32 or BF16); all device, 16-byte aligned, rows
  // contiguous.
  void bf16(const void* weight, int64_t n, int64_t k, const void* x, int64_t m, void* y, DType y_dtype,
            float alpha = 1.0f);
  // weight: device NVFP4 [n, k]; scratch: bf16, at least n * k elements, overwritten. The two steps below, on
  // this object's stream.
  void nvfp4(const Nvfp4Weight& weight, void* scratch, int64_t scratch_elements, const void* x, int64_t m, void* y,
             DType y_dtype);
  // The first step, on any stream (a caller may dequantise ahead, beside other work): scratch = the weight's
  // e2m1 * e4m3 values in bf16.
  static void dequantize(const Nvfp4Weight& weight, void* scratch, int64_t scratch_elements, cudaStream_t stream);
  // The second: y = x . scratch^T times the weight's global scale, scratch being `dequantize`'s output for it.
  void nvfp4_dequantized(const Nvfp4Weight& weight, const void* scratch, const void* x, int64_t m, void* y,
                         DType y_dtype);

 private:
  cudaStream_t stream_;
  cublasHandle_t handle_ = nullptr;
};

}  // namespace uberlm::cuda
