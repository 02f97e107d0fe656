#include "model/shapes.h"

namespace uberlm {

namespace {

// Qwen3.5 hybrid shapes: 3 Gated DeltaNet layers then 1 gated full-attention layer, repeated.
ModelConfig qwen3_5_shape(int hidden, int layers, int intermediate, int heads, int kv_heads, int delta_net_k_heads,
                          int delta_net_v_heads) {
  ModelConfig c;
  c.model_type = "qwen3_5_text";
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.intermediate_size = intermediate;
  c.vocab_size = 248320;
  c.rms_norm_eps = 1e-6f;
  c.norm_style = NormStyle::OnePlusWeight;
  for (int i = 0; i < layers; ++i) {
    c.layer_kinds.push_back((i + 1) % 4 == 0 ? LayerKind::FullAttention : LayerKind::GatedDeltaNet);
  }
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = 256;
  c.rotary_dim = 64;
  c.rope_theta = 1e7f;
  c.qk_norm = true;
  c.attn_output_gate = true;
  c.max_position_embeddings = 262144;
  c.delta_net_num_key_heads = delta_net_k_heads;
  c.delta_net_num_value_heads = delta_net_v_heads;
  c.delta_net_key_head_dim = 128;
  c.delta_net_value_head_dim = 128;
  c.delta_net_conv_kernel = 4;
  return c;
}

}  // namespace

std::optional<ModelConfig> named_model_shape(const std::string& name) {
  if (name == "qwen3.5-27b") return qwen3_5_shape(5120, 64, 17408, 24, 4, 16, 48);  // spec/qwen3_5.md
  if (name == "qwen3.5-9b") return qwen3_5_shape(4096, 32, 12288, 16, 4, 16, 32);
  return std::nullopt;
}

}  // namespace uberlm
