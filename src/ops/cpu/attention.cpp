#include "ops/cpu/attention.h"

#include <cmath>
#include <vector>

#include "ops/cpu/linear.h"

namespace uberlm::cpu {

void attend_one_token(const float* q, const float* keys, const float* values, int64_t position,
                      const AttentionShape& shape, float* out) {
  const int group = shape.num_heads / shape.num_kv_heads;
  const int64_t kv_stride = static_cast<int64_t>(shape.num_kv_heads) * shape.head_dim;
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  std::vector<float> scores(position + 1);
  for (int h = 0; h < shape.num_heads; ++h) {
    const float* q_head = q + static_cast<int64_t>(h) * shape.head_dim;
    const int64_t kv_offset = static_cast<int64_t>(h / group) * shape.head_dim;
    float max_score = -INFINITY;
    for (int64_t p = 0; p <= position; ++p) {
      scores[p] = dot(q_head, keys + p * kv_stride + kv_offset, shape.head_dim) * scale;
      max_score = std::max(max_score, scores[p]);
    }
    float sum = 0.0f;
    for (int64_t p = 0; p <= position; ++p) {
      scores[p] = std::exp(scores[p] - max_score);
      sum += scores[p];
    }
    float* out_head = out + static_cast<int64_t>(h) * shape.head_dim;
    for (int d = 0; d < shape.head_dim; ++d) out_head[d] = 0.0f;
    for (int64_t p = 0; p <= position; ++p) {
      const float weight = scores[p] / sum;
      const float* v = values + p * kv_stride + kv_offset;
      for (int d = 0; d < shape.head_dim; ++d) out_head[d] += weight * v[d];
    }
  }
}

}  // namespace uberlm::cpu
