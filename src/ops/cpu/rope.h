#pragma once
// Rotary position embedding, NeoX pairing (dim i with i + rotary_dim/2), on the first rotary_dim
// dims of each head; the rest pass through. inv_freq[j] = theta^(-2j / rotary_dim).
#include <cstdint>
#include <vector>

namespace uberlm::cpu {

class Rope {
 public:
  Rope(int rotary_dim, float theta);
  // x: [num_heads, head_dim] of one token at `position`, rotated in place.
  void apply(float* x, int num_heads, int head_dim, int64_t position) const;

 private:
  int rotary_dim_;
  std::vector<float> inv_freq_;  // [rotary_dim / 2]
};

}  // namespace uberlm::cpu
