#pragma once
// How an RMSNorm applies its weight: a property of the checkpoint (model/config.h) that the norm ops
// (ops/cpu/norm.h, the CUDA norms' weight offset) take as a plain value.

namespace uberlm {

enum class NormStyle {
  Weight,        // y = x * rsqrt(mean(x^2) + eps) * w            (llama, qwen2, qwen3)
  OnePlusWeight  // y = x * rsqrt(mean(x^2) + eps) * (1 + w)      (qwen3_5: zero-centred weights)
};

// The offset the CUDA norms add to each weight: 1 for (1 + w), 0 for w.
inline float norm_weight_offset(NormStyle style) { return style == NormStyle::OnePlusWeight ? 1.0f : 0.0f; }

}  // namespace uberlm
