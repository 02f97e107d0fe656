#include "ops/cpu/rope.h"

#include <cmath>

namespace uberlm::cpu {

Rope::Rope(int rotary_dim, float theta) : rotary_dim_(rotary_dim), inv_freq_(rotary_dim / 2) {
  // As transformers: 1 / theta^(arange(0, dim, 2) / dim), in fp32.
  for (int j = 0; j < rotary_dim / 2; ++j) {
    inv_freq_[j] = 1.0f / std::pow(theta, static_cast<float>(2 * j) / static_cast<float>(rotary_dim));
  }
}

void Rope::apply(float* x, int num_heads, int head_dim, int64_t position) const {
  const int half = rotary_dim_ / 2;
  for (int j = 0; j < half; ++j) {
    const float angle = static_cast<float>(position) * inv_freq_[j];
    const float c = std::cos(angle), s = std::sin(angle);
    for (int h = 0; h < num_heads; ++h) {
      float* head = x + static_cast<int64_t>(h) * head_dim;
      const float x1 = head[j], x2 = head[j + half];
      head[j] = x1 * c - x2 * s;  // x*cos + rotate_half(x)*sin, rotate_half = (-x2, x1)
      head[j + half] = x2 * c + x1 * s;
    }
  }
}

}  // namespace uberlm::cpu
