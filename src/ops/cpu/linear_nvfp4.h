#pragma once
// CPU reference linear layer on NVFP4 weights; the CUDA GEMV is checked against it.
#include <cstdint>

#include "core/nvfp4.h"

namespace uberlm::cpu {

// y[M, N] = x[M, K] . W^T, W dequantised row by row to fp32, fp32 accumulation; threaded over N.
void linear_nvfp4(const float* x, int64_t m, const Nvfp4Weight& weight, float* y);

}  // namespace uberlm::cpu
