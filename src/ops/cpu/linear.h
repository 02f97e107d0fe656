#pragma once
// Dense linear layer on the CPU: y[T, N] = x[T, K] · W[N, K]^T (+ bias[N]), fp32 math over F32,
// F16 or BF16 weights. Each output element is one dot product in a fixed order, so a token's result
// does not depend on which other tokens share the batch (batch invariance).
#include <cstdint>

#include "core/tensor.h"

namespace uberlm::cpu {

// x: [T, K] fp32; weight: [N, K]; bias: [N] or data == nullptr; y: [T, N] fp32.
void linear(const float* x, int64_t num_tokens, const TensorView& weight, const TensorView& bias, float* y);

// One fp32 dot product in the fixed summation order every CPU kernel uses.
float dot(const float* a, const float* b, int64_t n);

}  // namespace uberlm::cpu
