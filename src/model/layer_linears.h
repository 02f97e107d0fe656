#pragma once
// The one list of a decoder layer's linear layers, by checkpoint name. Loading (model/weights.cpp), load-time
// quantisation, the GPU upload and layout (runtime/cuda/device_model.cpp) and the tests iterate it, so a
// layer's projections are named and shaped in exactly one place. Any struct with the members of
// LayerWeights (kind; attention.{q,k,v,o}_proj; delta_net.{in_proj_qkv, in_proj_z, in_proj_b, in_proj_a,
// out_proj}; mlp.{gate,up,down}_proj) can be walked, the device copy included.
#include <array>
#include <cstdint>
#include <string_view>

#include "model/config.h"

namespace uberlm {

enum class LinearRole {
  QProj, KProj, VProj, OProj,                                             // full attention
  DeltaNetInProjQkv, DeltaNetInProjZ, DeltaNetInProjB, DeltaNetInProjA, DeltaNetOutProj,  // Gated DeltaNet
  GateProj, UpProj, DownProj,                                             // MLP
};

struct LinearSpec {
  LinearRole role;
  std::string_view module;  // under "layers.N.", as the checkpoint names it
  int64_t out_features;
  int64_t in_features;
  bool bias;
};

// The linear layers of a layer of one kind, mixer first, then the MLP: 4 + 3 or 5 + 3 of them.
class LayerLinearSpecs {
 public:
  LayerLinearSpecs(const ModelConfig& c, LayerKind kind) {
    const int64_t dim = c.hidden_size;
    if (kind == LayerKind::FullAttention) {
      const int64_t kv_rows = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
      add(LinearRole::QProj, "self_attn.q_proj", c.q_proj_rows(), dim, c.qkv_bias);
      add(LinearRole::KProj, "self_attn.k_proj", kv_rows, dim, c.qkv_bias);
      add(LinearRole::VProj, "self_attn.v_proj", kv_rows, dim, c.qkv_bias);
      add(LinearRole::OProj, "self_attn.o_proj", dim, static_cast<int64_t>(c.num_heads) * c.head_dim, c.o_bias);
    } else {
      add(LinearRole::DeltaNetInProjQkv, "linear_attn.in_proj_qkv", c.delta_net_conv_dim(), dim, false);
      add(LinearRole::DeltaNetInProjZ, "linear_attn.in_proj_z", c.delta_net_value_dim(), dim, false);
      add(LinearRole::DeltaNetInProjB, "linear_attn.in_proj_b", c.delta_net_num_value_heads, dim, false);
      add(LinearRole::DeltaNetInProjA, "linear_attn.in_proj_a", c.delta_net_num_value_heads, dim, false);
      add(LinearRole::DeltaNetOutProj, "linear_attn.out_proj", dim, c.delta_net_value_dim(), false);
    }
    add(LinearRole::GateProj, "mlp.gate_proj", c.intermediate_size, dim, false);
    add(LinearRole::UpProj, "mlp.up_proj", c.intermediate_size, dim, false);
    add(LinearRole::DownProj, "mlp.down_proj", dim, c.intermediate_size, false);
  }
  const LinearSpec* begin() const { return specs_.data(); }
  const LinearSpec* end() const { return specs_.data() + count_; }
  int size() const { return count_; }

 private:
  void add(LinearRole role, std::string_view module, int64_t out, int64_t in, bool bias) {
    specs_[count_++] = {role, module, out, in, bias};
  }
  std::array<LinearSpec, 8> specs_{};
  int count_ = 0;
};

// The member of `layer` that holds the linear layer of `role`.
template <class Layer>
auto& linear_of(Layer& layer, LinearRole role) {
  switch (role) {
    case LinearRole::QProj: return layer.attention.q_proj;
    case LinearRole::KProj: return layer.attention.k_proj;
    case LinearRole::VProj: return layer.attention.v_proj;
    case LinearRole::OProj: return layer.attention.o_proj;
    case LinearRole::DeltaNetInProjQkv: return layer.delta_net.in_proj_qkv;
    case LinearRole::DeltaNetInProjZ: return layer.delta_net.in_proj_z;
    case LinearRole::DeltaNetInProjB: return layer.delta_net.in_proj_b;
    case LinearRole::DeltaNetInProjA: return layer.delta_net.in_proj_a;
    case LinearRole::DeltaNetOutProj: return layer.delta_net.out_proj;
    case LinearRole::GateProj: return layer.mlp.gate_proj;
    case LinearRole::UpProj: return layer.mlp.up_proj;
    case LinearRole::DownProj: return layer.mlp.down_proj;
  }
  return layer.mlp.down_proj;  // unreachable: every role is listed above
}

// fn(spec, linear) for every linear layer of `layer` (config: the shapes), in layer_linear_specs order.
template <class Layer, class Fn>
void for_each_linear(const ModelConfig& config, Layer& layer, Fn&& fn) {
  for (const LinearSpec& spec : LayerLinearSpecs(config, layer.kind)) fn(spec, linear_of(layer, spec.role));
}

}  // namespace uberlm
