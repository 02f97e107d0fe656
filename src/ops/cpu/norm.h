#pragma once
// RMS norms of the decoder, fp32. Weights are fp32 copies made at load.
#include <cstdint>

#include "core/norm_style.h"

namespace uberlm::cpu {

// y[r, :] = x[r, :] * rsqrt(mean(x[r]^2) + eps) * w'   with w' = w or (1 + w) by style; x, y: [rows, dim].
// In place is allowed (y == x).
void rms_norm(const float* x, int64_t rows, int64_t dim, const float* weight, NormStyle style, float eps, float* y);

// Qwen3.5's gated norm (linear_attn.norm): y = (w * x * rsqrt(mean(x^2) + eps)) * silu(z); x, z, y: [rows, dim].
void gated_rms_norm(const float* x, const float* z, int64_t rows, int64_t dim, const float* weight, float eps, float* y);

// x *= rsqrt(sum(x^2) + eps), in place over one vector of `dim` (FLA's l2norm, eps 1e-6).
void l2_normalize(float* x, int64_t dim, float eps);

}  // namespace uberlm::cpu
