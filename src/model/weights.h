#pragma once
// The decoder's weights as the checkpoint stores them (views into the mapped files), grouped per
// layer. load_model_weights checks that every tensor the config implies exists with its shape.
#include <optional>
#include <string>
#include <vector>

#include "core/nvfp4.h"
#include "core/tensor.h"
#include "io/checkpoint.h"
#include "model/config.h"
#include "model/layer_linears.h"

namespace uberlm {

// A linear layer as the checkpoint stores it: dense (`weight`) or NVFP4 (`nvfp4`, W4A16; then
// `weight` is empty). Consumers dispatch on has_value(); neither format is converted at load.
// Which one is decided per layer by the tensors present (spec/nvfp4.md), so mixed checkpoints load:
//   ModelOpt           X.weight U8 [N, K/2], X.weight_scale F8_E4M3 [N, K/16], X.weight_scale_2 F32 scalar
//   compressed-tensors X.weight_packed U8 [N, K/2], X.weight_scale F8_E4M3 [N, K/16],
//                      X.weight_global_scale F32 [1] (a divisor)
// input_scale / input_global_scale (W4A4 activation scales) are ignored: activations stay 16-bit.
struct LinearWeight {
  std::string name;   // canonical module name, e.g. "layers.3.mlp.up_proj"
  TensorView weight;  // dense [out_features, in_features]
  std::optional<Nvfp4Weight> nvfp4;  // quantised [out_features, in_features]
  TensorView bias;    // [out_features]; data == nullptr when the layer has none
  int64_t out_features() const { return nvfp4 ? nvfp4->rows : weight.dim(0); }
  int64_t in_features() const { return nvfp4 ? nvfp4->cols : weight.dim(1); }
};

struct AttentionWeights {
  LinearWeight q_proj;  // [H * head_dim * (gate ? 2 : 1), D]; per head: query then gate
  LinearWeight k_proj, v_proj;  // [KV * head_dim, D]
  LinearWeight o_proj;  // [D, H * head_dim]
  TensorView q_norm, k_norm;  // [head_dim] when config.qk_norm
};

struct GatedDeltaNetWeights {
  LinearWeight in_proj_qkv;  // [conv_dim, D], q | k | v
  LinearWeight in_proj_z;    // [value_dim, D]
  LinearWeight in_proj_b;    // [num_v_heads, D]
  LinearWeight in_proj_a;    // [num_v_heads, D]
  LinearWeight out_proj;     // [D, value_dim]
  TensorView conv1d;         // [conv_dim, 1, kernel]
  TensorView dt_bias, a_log; // [num_v_heads]
  TensorView norm;           // [v_head_dim]
};

struct MlpWeights {
  LinearWeight gate_proj, up_proj;  // [I, D]
  LinearWeight down_proj;           // [D, I]
};

struct LayerWeights {
  LayerKind kind;
  TensorView input_norm, post_attention_norm;  // [D]
  AttentionWeights attention;  // when kind == FullAttention
  GatedDeltaNetWeights delta_net;   // when kind == GatedDeltaNet
  MlpWeights mlp;
};

struct ModelWeights {
  TensorView embed_tokens;  // [V, D]
  TensorView final_norm;    // [D]
  LinearWeight lm_head;     // [V, D]; the embedding itself when tied
  std::vector<LayerWeights> layers;
};

// Every linear layer of the model (const or not), layer by layer in layer_linears.h's order, then lm_head.
template <class Weights>
auto all_linear_layers(Weights& weights, const ModelConfig& config) {
  std::vector<decltype(&weights.lm_head)> layers;
  for (auto& layer : weights.layers) {
    for_each_linear(config, layer, [&](const LinearSpec&, auto& linear) { layers.push_back(&linear); });
  }
  layers.push_back(&weights.lm_head);
  return layers;
}

// The quantisation a checkpoint declares in config.json's quantization_config or hf_quant_config.json.
enum class QuantizationFormat { None, ModelOpt, CompressedTensors };
// Throws Error naming the file and field when the declared method is not NVFP4 in one of the two layouts.
QuantizationFormat read_quantization_format(const std::filesystem::path& dir);

// Throws Error naming the tensor when one is missing or has the wrong shape or dtype, when an NVFP4
// layer's scales are missing or inconsistent, its global scale zero or not finite, or its layout is
// not the one the checkpoint declares.
ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& config);

}  // namespace uberlm
