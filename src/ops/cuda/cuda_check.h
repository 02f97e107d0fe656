#pragma once
// CUDA_CHECK(call): throws uberlm::Error with the file:line, the failing expression and CUDA's error
// string. CUDA_CHECK_LAUNCH() after a kernel launch catches bad launch configurations at once.
// For .cpp files only: nvcc cannot compile fmt, so .cu files return cudaError_t to a .cpp caller.
#include <cuda_runtime_api.h>

#include "core/error.h"

namespace uberlm {

[[noreturn]] inline void fail_cuda(cudaError_t status, const char* expression, const char* file, int line) {
  fail("{}:{}: {} failed: {} ({})", file, line, expression, cudaGetErrorString(status), cudaGetErrorName(status));
}

}  // namespace uberlm

#define CUDA_CHECK(call)                                                          \
  do {                                                                            \
    const cudaError_t uberlm_cuda_status_ = (call);                               \
    if (uberlm_cuda_status_ != cudaSuccess)                                       \
      ::uberlm::fail_cuda(uberlm_cuda_status_, #call, __FILE__, __LINE__);        \
  } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
