#include "ops/cpu/norm.h"

#include <cmath>

#include "ops/cpu/activation.h"
#include "ops/cpu/linear.h"

namespace uberlm::cpu {

namespace {
float inverse_rms(const float* x, int64_t dim, float eps) {
  return 1.0f / std::sqrt(dot(x, x, dim) / static_cast<float>(dim) + eps);
}
}  // namespace

void rms_norm(const float* x, int64_t rows, int64_t dim, const float* weight, NormStyle style, float eps, float* y) {
  const float offset = norm_weight_offset(style);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * dim;
    float* out = y + r * dim;
    const float scale = inverse_rms(in, dim, eps);
    for (int64_t i = 0; i < dim; ++i) out[i] = in[i] * scale * (offset + weight[i]);
  }
}

void gated_rms_norm(const float* x, const float* z, int64_t rows, int64_t dim, const float* weight, float eps,
                    float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * dim;
    const float* gate = z + r * dim;
    float* out = y + r * dim;
    const float scale = inverse_rms(in, dim, eps);
    for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (in[i] * scale) * silu(gate[i]);
  }
}

void l2_normalize(float* x, int64_t dim, float eps) {
  const float scale = 1.0f / std::sqrt(dot(x, x, dim) + eps);
  for (int64_t i = 0; i < dim; ++i) x[i] *= scale;
}

}  // namespace uberlm::cpu
