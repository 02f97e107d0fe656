#include "model/weights.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/regular_file.h"

namespace uberlm {

namespace {

using nlohmann::json;

// The JSON object in `path`, or null when the file does not exist.
json read_json_if_present(const std::filesystem::path& path) {
  require_regular_file(path);
  std::ifstream stream(path, std::ios::binary);
  if (!stream) return nullptr;
  std::stringstream text;
  text << stream.rdbuf();
  try {
    json root = json::parse(text.str());
    if (!root.is_object()) fail("{}: expected a JSON object", path.string());
    return root;
  } catch (const json::exception& error) {
    fail("{}: invalid JSON: {}", path.string(), error.what());
  }
}

std::string string_field(const json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

const char* layout_name(QuantizationFormat format) {
  return format == QuantizationFormat::ModelOpt ? "ModelOpt NVFP4" : "compressed-tensors nvfp4-pack-quantized";
}

class WeightReader {
 public:
  WeightReader(const Checkpoint& checkpoint, QuantizationFormat declared)
      : checkpoint_(checkpoint), declared_(declared) {}

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
    LinearWeight layer{module, {}, std::nullopt, {}};
    const std::string weight = module + ".weight";
    if (checkpoint_.has(module + ".weight_packed")) {
      layer.nvfp4 = nvfp4(module, QuantizationFormat::CompressedTensors, out_features, in_features);
    } else if (checkpoint_.has(module + ".weight_scale") || checkpoint_.has(module + ".weight_scale_2") ||
               (checkpoint_.has(weight) && checkpoint_.get(weight).dtype == DType::U8)) {
      layer.nvfp4 = nvfp4(module, QuantizationFormat::ModelOpt, out_features, in_features);
    } else {
      layer.weight = tensor(weight, {out_features, in_features});
    }
    if (bias) layer.bias = tensor(module + ".bias", {out_features});
    return layer;
  }

 private:
  // An NVFP4 layer's tensors in `layout`, each checked for presence, dtype and shape.
  Nvfp4Weight nvfp4(const std::string& module, QuantizationFormat layout, int64_t rows, int64_t cols) const {
    const bool modelopt = layout == QuantizationFormat::ModelOpt;
    if (declared_ != QuantizationFormat::None && declared_ != layout) {
      fail("checkpoint {}: layer {} is stored in the {} layout but the checkpoint declares {}",
           checkpoint_.dir().string(), checkpoint_.original_name(module + (modelopt ? ".weight" : ".weight_packed")),
           layout_name(layout), layout_name(declared_));
    }
    if (cols % kNvfp4BlockSize != 0) {
      fail("checkpoint {}: NVFP4 layer {} has {} input features, not a multiple of {}", checkpoint_.dir().string(),
           module, cols, kNvfp4BlockSize);
    }
    const TensorView packed = part(module, modelopt ? "weight" : "weight_packed", layout, DType::U8, {rows, cols / 2});
    const TensorView scales = part(module, "weight_scale", layout, DType::F8_E4M3, {rows, cols / kNvfp4BlockSize});
    const std::string global_name = modelopt ? "weight_scale_2" : "weight_global_scale";
    const TensorView global = part(module, global_name.c_str(), layout, DType::F32, {});
    const float value = *global.as<float>();
    if (!std::isfinite(value) || value <= 0.0f) {
      fail("checkpoint {}: tensor {} is {}; an NVFP4 global scale must be positive and finite",
           checkpoint_.dir().string(), checkpoint_.original_name(module + "." + global_name), value);
    }
    Nvfp4Weight weight{rows, cols, packed.as<uint8_t>(), scales.as<uint8_t>(), modelopt ? value : 1.0f / value};
    if (!modelopt) weight.global_divisor = value;
    return weight;
  }

  // One tensor of an NVFP4 layer. An empty `shape` means a scalar, stored as [] or [1].
  TensorView part(const std::string& module, const char* suffix, QuantizationFormat layout, DType dtype,
                  const std::vector<int64_t>& shape) const {
    const std::string name = module + "." + suffix;
    if (!checkpoint_.has(name)) {
      fail("checkpoint {}: NVFP4 layer {} ({} layout) has no tensor {}", checkpoint_.dir().string(), module,
           layout_name(layout), name);
    }
    const TensorView view = checkpoint_.get(name);
    const bool scalar_ok = shape.empty() && view.numel() == 1 && view.shape.size() <= 1;
    if (view.dtype != dtype || (!scalar_ok && view.shape != shape)) {
      fail("checkpoint {}: NVFP4 tensor {} is {} {}, expected {} {}", checkpoint_.dir().string(),
           checkpoint_.original_name(name), dtype_name(view.dtype), shape_string(view.shape), dtype_name(dtype),
           shape.empty() ? std::string("scalar") : shape_string(shape));
    }
    return view;
  }

  const Checkpoint& checkpoint_;
  QuantizationFormat declared_;
};

// The non-linear tensors of each mixer; the linear layers come from layer_linears.h's list.
void load_attention_tensors(const WeightReader& reader, const std::string& prefix, const ModelConfig& c,
                            AttentionWeights& w) {
  if (c.qk_norm) {
    w.q_norm = reader.tensor(prefix + "q_norm.weight", {c.head_dim});
    w.k_norm = reader.tensor(prefix + "k_norm.weight", {c.head_dim});
  }
}

void load_delta_net_tensors(const WeightReader& reader, const std::string& prefix, const ModelConfig& c,
                            GatedDeltaNetWeights& w) {
  w.conv1d = reader.tensor(prefix + "conv1d.weight", {c.delta_net_conv_dim(), 1, c.delta_net_conv_kernel});
  w.dt_bias = reader.tensor(prefix + "dt_bias", {c.delta_net_num_value_heads});
  w.a_log = reader.tensor(prefix + "A_log", {c.delta_net_num_value_heads});
  w.norm = reader.tensor(prefix + "norm.weight", {c.delta_net_value_head_dim});
}

}  // namespace

QuantizationFormat read_quantization_format(const std::filesystem::path& dir) {
  QuantizationFormat format = QuantizationFormat::None;
  const json hf_quant = read_json_if_present(dir / "hf_quant_config.json");
  if (!hf_quant.is_null()) {
    const auto quantization = hf_quant.find("quantization");
    const std::string algo = quantization != hf_quant.end() && quantization->is_object()
                                 ? string_field(*quantization, "quant_algo") : std::string();
    if (algo != "NVFP4") {
      fail("{}: quantization.quant_algo is '{}'; only NVFP4 is supported", (dir / "hf_quant_config.json").string(),
           algo);
    }
    format = QuantizationFormat::ModelOpt;
  }
  const json config = read_json_if_present(dir / "config.json");
  const auto quant_config = config.is_null() ? json::const_iterator() : config.find("quantization_config");
  if (config.is_null() || quant_config == config.end() || quant_config->is_null()) return format;
  const std::string source = (dir / "config.json").string();
  if (!quant_config->is_object()) fail("{}: quantization_config must be an object", source);
  const std::string method = string_field(*quant_config, "quant_method");
  QuantizationFormat declared;
  if (method == "modelopt") {
    const std::string algo = string_field(*quant_config, "quant_algo");
    if (!algo.empty() && algo != "NVFP4") {
      fail("{}: quantization_config.quant_algo is '{}'; only NVFP4 is supported", source, algo);
    }
    declared = QuantizationFormat::ModelOpt;
  } else if (method == "compressed-tensors") {
    const std::string packing = string_field(*quant_config, "format");
    if (packing != "nvfp4-pack-quantized") {
      fail("{}: quantization_config.format is '{}'; only nvfp4-pack-quantized is supported", source, packing);
    }
    declared = QuantizationFormat::CompressedTensors;
  } else {
    fail("{}: quantization_config.quant_method '{}' is not supported (modelopt or compressed-tensors NVFP4)", source,
         method);
  }
  if (format != QuantizationFormat::None && format != declared) {
    fail("{}: quantization_config says {} but hf_quant_config.json says {}", source, layout_name(declared),
         layout_name(format));
  }
  return declared;
}

ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& c) {
  WeightReader reader(checkpoint, read_quantization_format(checkpoint.dir()));
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
    for_each_linear(c, layer, [&](const LinearSpec& spec, LinearWeight& linear) {
      linear = reader.linear(prefix + std::string(spec.module), spec.out_features, spec.in_features, spec.bias);
    });
    if (layer.kind == LayerKind::FullAttention) {
      load_attention_tensors(reader, prefix + "self_attn.", c, layer.attention);
    } else {
      load_delta_net_tensors(reader, prefix + "linear_attn.", c, layer.delta_net);
    }
    weights.layers.push_back(std::move(layer));
  }
  return weights;
}

}  // namespace uberlm
