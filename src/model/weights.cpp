#include "model/weights.h"

#include <fmt/format.h>

#include "core/error.h"

namespace uberlm {

namespace {

class WeightReader {
 public:
  WeightReader(const Checkpoint& checkpoint) : checkpoint_(checkpoint) {}

  TensorView tensor(const std::string& name, std::vector<int64_t> shape) const {
    TensorView view = checkpoint_.get(name);
    if (view.shape != shape) {
      fail("checkpoint {}: tensor {} has shape {}, expected {}", checkpoint_.dir().string(),
           checkpoint_.original_name(name), shape_string(view.shape), shape_string(shape));
    }
    if (view.dtype != DType::F32 && view.dtype != DType::BF16 && view.dtype != DType::F16) {
      fail("checkpoint {}: tensor {} has dtype {}, expected F32, F16 or BF16", checkpoint_.dir().string(),
           checkpoint_.original_name(name), dtype_name(view.dtype));
    }
    return view;
  }

  LinearWeight linear(const std::string& module, int64_t out_features, int64_t in_features, bool bias) const {
    LinearWeight layer{module, tensor(module + ".weight", {out_features, in_features}), std::nullopt, {}};
    if (bias) layer.bias = tensor(module + ".bias", {out_features});
    return layer;
  }

 private:
  const Checkpoint& checkpoint_;
};

AttentionWeights load_attention(const WeightReader& reader, const std::string& prefix, const ModelConfig& c) {
  const int64_t kv_rows = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  AttentionWeights w;
  w.q_proj = reader.linear(prefix + "q_proj", c.q_proj_rows(), c.hidden_size, c.qkv_bias);
  w.k_proj = reader.linear(prefix + "k_proj", kv_rows, c.hidden_size, c.qkv_bias);
  w.v_proj = reader.linear(prefix + "v_proj", kv_rows, c.hidden_size, c.qkv_bias);
  w.o_proj = reader.linear(prefix + "o_proj", c.hidden_size, static_cast<int64_t>(c.num_heads) * c.head_dim,
                           c.o_bias);
  if (c.qk_norm) {
    w.q_norm = reader.tensor(prefix + "q_norm.weight", {c.head_dim});
    w.k_norm = reader.tensor(prefix + "k_norm.weight", {c.head_dim});
  }
  return w;
}

DeltaNetWeights load_delta_net(const WeightReader& reader, const std::string& prefix, const ModelConfig& c) {
  DeltaNetWeights w;
  w.in_proj_qkv = reader.linear(prefix + "in_proj_qkv", c.linear_conv_dim(), c.hidden_size, false);
  w.in_proj_z = reader.linear(prefix + "in_proj_z", c.linear_value_dim(), c.hidden_size, false);
  w.in_proj_b = reader.linear(prefix + "in_proj_b", c.linear_num_value_heads, c.hidden_size, false);
  w.in_proj_a = reader.linear(prefix + "in_proj_a", c.linear_num_value_heads, c.hidden_size, false);
  w.out_proj = reader.linear(prefix + "out_proj", c.hidden_size, c.linear_value_dim(), false);
  w.conv1d = reader.tensor(prefix + "conv1d.weight", {c.linear_conv_dim(), 1, c.linear_conv_kernel});
  w.dt_bias = reader.tensor(prefix + "dt_bias", {c.linear_num_value_heads});
  w.a_log = reader.tensor(prefix + "A_log", {c.linear_num_value_heads});
  w.norm = reader.tensor(prefix + "norm.weight", {c.linear_value_head_dim});
  return w;
}

}  // namespace

ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& c) {
  WeightReader reader(checkpoint);
  ModelWeights weights;
  weights.embed_tokens = reader.tensor("embed_tokens.weight", {c.vocab_size, c.hidden_size});
  weights.final_norm = reader.tensor("norm.weight", {c.hidden_size});
  if (c.tie_word_embeddings && !checkpoint.has("lm_head.weight")) {
    weights.lm_head = LinearWeight{"embed_tokens", weights.embed_tokens, std::nullopt, {}};
  } else {
    weights.lm_head = reader.linear("lm_head", c.vocab_size, c.hidden_size, false);
  }
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string prefix = fmt::format("layers.{}.", i);
    LayerWeights layer;
    layer.kind = c.layer_kinds[i];
    layer.input_norm = reader.tensor(prefix + "input_layernorm.weight", {c.hidden_size});
    layer.post_attention_norm = reader.tensor(prefix + "post_attention_layernorm.weight", {c.hidden_size});
    if (layer.kind == LayerKind::FullAttention) {
      layer.attention = load_attention(reader, prefix + "self_attn.", c);
    } else {
      layer.delta_net = load_delta_net(reader, prefix + "linear_attn.", c);
    }
    layer.mlp.gate_proj = reader.linear(prefix + "mlp.gate_proj", c.intermediate_size, c.hidden_size, false);
    layer.mlp.up_proj = reader.linear(prefix + "mlp.up_proj", c.intermediate_size, c.hidden_size, false);
    layer.mlp.down_proj = reader.linear(prefix + "mlp.down_proj", c.hidden_size, c.intermediate_size, false);
    weights.layers.push_back(std::move(layer));
  }
  return weights;
}

}  // namespace uberlm
