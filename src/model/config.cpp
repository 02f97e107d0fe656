#include "model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/regular_file.h"

namespace uberlm {

using nlohmann::json;

const char* layer_kind_name(LayerKind kind) {
  return kind == LayerKind::FullAttention ? "full_attention" : "linear_attention";
}

int ModelConfig::num_layers_of(LayerKind kind) const {
  return static_cast<int>(std::count(layer_kinds.begin(), layer_kinds.end(), kind));
}

namespace {

// A short description of a JSON value for error messages; containers are not dumped, since a deeply
// nested one would overflow the stack.
std::string describe(const json& value) {
  if (value.is_structured()) return value.type_name();
  return value.dump();
}

// Reads fields of one JSON object and names the source and field in every error.
class FieldReader {
 public:
  FieldReader(const json& object, std::string source) : object_(object), source_(std::move(source)) {}

  bool has(const char* key) const { return object_.contains(key) && !object_.at(key).is_null(); }

  int required_int(const char* key) const {
    if (!has(key)) fail("{}: missing required field '{}'", source_, key);
    return int_value(key);
  }
  int optional_int(const char* key, int fallback) const { return has(key) ? int_value(key) : fallback; }
  // A size: a positive integer.
  int required_size(const char* key) const { return positive(key, required_int(key)); }
  int optional_size(const char* key, int fallback) const { return positive(key, optional_int(key, fallback)); }
  float optional_float(const char* key, float fallback) const {
    if (!has(key)) return fallback;
    const json& value = object_.at(key);
    if (!value.is_number()) fail("{}: field '{}' must be a number, got {}", source_, key, describe(value));
    return value.get<float>();
  }
  // A positive, finite number (an epsilon, a RoPE base).
  float optional_positive_float(const char* key, float fallback) const {
    const float value = optional_float(key, fallback);
    if (!(value > 0.0f) || !std::isfinite(value)) {
      fail("{}: field '{}' must be a positive finite number, got {}", source_, key, describe(object_.at(key)));
    }
    return value;
  }
  bool optional_bool(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& value = object_.at(key);
    if (!value.is_boolean()) fail("{}: field '{}' must be true or false, got {}", source_, key, describe(value));
    return value.get<bool>();
  }
  std::string required_string(const char* key) const {
    if (!has(key)) fail("{}: missing required field '{}'", source_, key);
    const json& value = object_.at(key);
    if (!value.is_string()) fail("{}: field '{}' must be a string, got {}", source_, key, describe(value));
    return value.get<std::string>();
  }
  const json& at(const char* key) const { return object_.at(key); }
  const std::string& source() const { return source_; }

 private:
  int int_value(const char* key) const {
    const json& value = object_.at(key);
    if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > (1LL << 30)) {
      fail("{}: field '{}' must be a non-negative integer, got {}", source_, key, describe(value));
    }
    return value.get<int>();
  }
  int positive(const char* key, int value) const {
    if (value <= 0) fail("{}: field '{}' must be positive, got {}", source_, key, value);
    return value;
  }
  const json& object_;
  std::string source_;
};

// What a family fixes, and transformers' default (5.24, configuration_<type>.py) of every field this
// parser lets a config.json leave out; tests/oracle/fixtures_config_defaults.py checks each default
// against what transformers builds. hidden_size, num_hidden_layers, intermediate_size,
// num_attention_heads and vocab_size are required: a checkpoint that omits them is not one we can trust.
struct FamilyTraits {
  const char* model_type;
  NormStyle norm_style;
  bool qk_norm;
  bool hybrid;
  bool qkv_bias_default;
  int num_key_value_heads;  // 0: num_attention_heads
  int head_dim;             // 0: hidden_size / num_attention_heads
  float partial_rotary_factor;
  int max_position_embeddings;
};

constexpr float kDefaultRmsNormEps = 1e-6f;  // every supported family
constexpr float kDefaultRopeTheta = 10000.0f;  // every supported family

constexpr FamilyTraits kFamilies[] = {
    {"qwen3_5_text", NormStyle::OnePlusWeight, true, true, false, 4, 256, 0.25f, 32768},
    {"llama", NormStyle::Weight, false, false, false, 0, 0, 1.0f, 2048},
    {"qwen2", NormStyle::Weight, false, false, true, 32, 0, 1.0f, 32768},
    {"qwen3", NormStyle::Weight, true, false, false, 32, 128, 1.0f, 32768},
};

// Qwen3.5's Gated DeltaNet defaults (Qwen3_5TextConfig).
constexpr int kDefaultFullAttentionInterval = 4;
constexpr int kDefaultLinearConvKernel = 4;
constexpr int kDefaultLinearKeyHeadDim = 128;
constexpr int kDefaultLinearValueHeadDim = 128;
constexpr int kDefaultLinearNumKeyHeads = 16;
constexpr int kDefaultLinearNumValueHeads = 32;

const FamilyTraits& family_of(const std::string& model_type, const std::string& source) {
  for (const auto& family : kFamilies) {
    if (model_type == family.model_type) return family;
  }
  fail("{}: unknown model_type '{}' (supported: qwen3_5, qwen3_5_text, llama, qwen2, qwen3)", source, model_type);
}

// RoPE settings live in `rope_parameters` (transformers >= 5) or at the top level (older configs).
void read_rope(const FieldReader& fields, float default_partial_rotary_factor, ModelConfig& config) {
  float partial = fields.optional_float("partial_rotary_factor", default_partial_rotary_factor);
  config.rope_theta = fields.optional_positive_float("rope_theta", kDefaultRopeTheta);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!fields.has(key)) continue;
    const json& rope = fields.at(key);
    if (!rope.is_object()) fail("{}: field '{}' must be an object", fields.source(), key);
    FieldReader rope_fields(rope, fields.source() + ": " + key);
    config.rope_theta = rope_fields.optional_positive_float("rope_theta", config.rope_theta);
    partial = rope_fields.optional_float("partial_rotary_factor", partial);
    std::string type = rope_fields.has("rope_type") ? rope_fields.required_string("rope_type")
                       : rope_fields.has("type")    ? rope_fields.required_string("type")
                                                    : "default";
    // mrope with text-only positions is plain 1-D RoPE (all three position rows are equal).
    if (type != "default" && type != "mrope") {
      fail("{}: rope type '{}' is not supported (only default RoPE)", fields.source(), type);
    }
  }
  if (!(partial > 0.0f && partial <= 1.0f)) {
    fail("{}: partial_rotary_factor must be in (0, 1], got {}", fields.source(), partial);
  }
  config.rotary_dim = static_cast<int>(config.head_dim * partial);
  if (config.rotary_dim % 2 != 0 || config.rotary_dim <= 0 || config.rotary_dim > config.head_dim) {
    fail("{}: partial_rotary_factor {} gives an invalid rotary dim {} for head_dim {}", fields.source(), partial,
         config.rotary_dim, config.head_dim);
  }
}

void read_layer_kinds(const FieldReader& fields, bool hybrid, ModelConfig& config) {
  config.layer_kinds.assign(config.num_layers, LayerKind::FullAttention);
  if (!hybrid) return;
  if (fields.has("layer_types")) {
    const json& types = fields.at("layer_types");
    if (!types.is_array() || types.size() != static_cast<size_t>(config.num_layers)) {
      fail("{}: field 'layer_types' must be a list of {} strings", fields.source(), config.num_layers);
    }
    for (int i = 0; i < config.num_layers; ++i) {
      std::string type = types[i].is_string() ? types[i].get<std::string>() : describe(types[i]);
      if (type == "linear_attention") {
        config.layer_kinds[i] = LayerKind::GatedDeltaNet;
      } else if (type != "full_attention") {
        fail("{}: layer_types[{}] is '{}' (expected linear_attention or full_attention)", fields.source(), i, type);
      }
    }
    return;
  }
  const int interval = fields.optional_size("full_attention_interval", kDefaultFullAttentionInterval);
  for (int i = 0; i < config.num_layers; ++i) {
    config.layer_kinds[i] = (i + 1) % interval == 0 ? LayerKind::FullAttention : LayerKind::GatedDeltaNet;
  }
}

void read_gated_delta_net(const FieldReader& fields, ModelConfig& config) {
  config.delta_net_num_key_heads = fields.optional_size("linear_num_key_heads", kDefaultLinearNumKeyHeads);
  config.delta_net_num_value_heads = fields.optional_size("linear_num_value_heads", kDefaultLinearNumValueHeads);
  config.delta_net_key_head_dim = fields.optional_size("linear_key_head_dim", kDefaultLinearKeyHeadDim);
  config.delta_net_value_head_dim = fields.optional_size("linear_value_head_dim", kDefaultLinearValueHeadDim);
  config.delta_net_conv_kernel = fields.optional_size("linear_conv_kernel_dim", kDefaultLinearConvKernel);
  if (config.delta_net_num_value_heads % config.delta_net_num_key_heads != 0) {
    fail("{}: linear_num_value_heads ({}) must be a multiple of linear_num_key_heads ({})", fields.source(),
         config.delta_net_num_value_heads, config.delta_net_num_key_heads);
  }
}

// Features transformers would apply and this decoder does not have: refused, never ignored.
void check_unsupported_features(const FieldReader& fields) {
  for (const char* flag : {"use_sliding_window", "mlp_bias"}) {
    if (fields.optional_bool(flag, false)) fail("{}: {} = true is not supported", fields.source(), flag);
  }
}

// A token id or a list of them (null: none), each inside [0, vocab_size); `where` names the file and field.
std::vector<int> token_ids(const json& value, const std::string& where, int vocab_size) {
  std::vector<int> ids;
  if (value.is_null()) return ids;
  for (const json& id : value.is_array() ? value : json::array({value})) {
    if (!id.is_number_integer()) fail("{} must be a token id or a list of token ids, got {}", where, describe(value));
    if (!id.is_number_unsigned() || id.get<uint64_t>() >= static_cast<uint64_t>(vocab_size)) {
      fail("{} {} is outside the vocabulary [0, {})", where, id.dump(), vocab_size);
    }
    ids.push_back(id.get<int>());
  }
  return ids;
}

// bos/eos/pad token ids must name tokens of the vocabulary.
void check_special_token_ids(const FieldReader& fields, int vocab_size) {
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (fields.has(key)) token_ids(fields.at(key), fields.source() + ": " + key, vocab_size);
  }
}

void check_activation(const FieldReader& fields) {
  if (!fields.has("hidden_act")) return;
  std::string act = fields.required_string("hidden_act");
  if (act != "silu" && act != "swish") fail("{}: hidden_act '{}' is not supported (only silu)", fields.source(), act);
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& source) {
  json root;
  try {
    root = json::parse(text);
  } catch (const json::exception& error) {  // parse_error, and out_of_range for numbers past a double
    fail("{}: invalid JSON: {}", source, error.what());
  }
  if (!root.is_object()) fail("{}: expected a JSON object", source);
  FieldReader top(root, source);
  std::string model_type = top.required_string("model_type");
  bool tie = top.optional_bool("tie_word_embeddings", false);

  // Multimodal Qwen3.5 checkpoints nest the language model under text_config.
  const json* text_root = &root;
  std::string text_source = source;
  if (model_type == "qwen3_5") {
    if (!top.has("text_config") || !root.at("text_config").is_object()) {
      fail("{}: model_type qwen3_5 needs a 'text_config' object", source);
    }
    text_root = &root.at("text_config");
    text_source = source + ": text_config";
    model_type = "qwen3_5_text";
  }
  FieldReader fields(*text_root, text_source);
  const FamilyTraits& family = family_of(model_type, text_source);

  ModelConfig config;
  config.model_type = model_type;
  config.hidden_size = fields.required_size("hidden_size");
  config.num_layers = fields.required_size("num_hidden_layers");
  config.intermediate_size = fields.required_size("intermediate_size");
  config.vocab_size = fields.required_size("vocab_size");
  config.num_heads = fields.required_size("num_attention_heads");
  config.num_kv_heads = fields.optional_size(
      "num_key_value_heads", family.num_key_value_heads > 0 ? family.num_key_value_heads : config.num_heads);
  config.head_dim =
      fields.optional_size("head_dim", family.head_dim > 0 ? family.head_dim : config.hidden_size / config.num_heads);
  if (config.num_heads % config.num_kv_heads != 0) {
    fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", text_source,
         config.num_heads, config.num_kv_heads);
  }
  config.rms_norm_eps = fields.optional_positive_float("rms_norm_eps", kDefaultRmsNormEps);
  config.tie_word_embeddings = fields.optional_bool("tie_word_embeddings", tie);
  config.max_position_embeddings = fields.optional_size("max_position_embeddings", family.max_position_embeddings);
  config.norm_style = family.norm_style;
  config.qk_norm = family.qk_norm;
  config.qkv_bias = fields.optional_bool("attention_bias", family.qkv_bias_default);
  config.o_bias = model_type != "qwen2" && config.qkv_bias;  // qwen2 biases q, k, v only
  config.attn_output_gate = family.hybrid && fields.optional_bool("attn_output_gate", true);
  check_activation(fields);
  check_unsupported_features(fields);
  read_rope(fields, family.partial_rotary_factor, config);
  read_layer_kinds(fields, family.hybrid, config);
  if (family.hybrid) read_gated_delta_net(fields, config);
  for (const FieldReader* reader : {&top, &fields}) check_special_token_ids(*reader, config.vocab_size);
  return config;
}

namespace {
std::string read_text_file(const std::filesystem::path& path) {
  require_regular_file(path);
  std::ifstream file(path, std::ios::binary);
  if (!file) fail("cannot open {}", path.string());
  std::stringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

}  // namespace

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  auto path = model_dir / "config.json";
  return parse_model_config(read_text_file(path), path.string());
}

std::vector<int> load_stop_token_ids(const std::filesystem::path& model_dir, int vocab_size) {
  std::vector<int> ids;
  for (const char* name : {"generation_config.json", "config.json"}) {
    auto path = model_dir / name;
    if (!std::filesystem::exists(path)) continue;
    json root;
    try {
      root = json::parse(read_text_file(path));
    } catch (const json::exception& error) {
      fail("{}: invalid JSON: {}", path.string(), error.what());
    }
    if (root.contains("eos_token_id")) {
      ids = token_ids(root["eos_token_id"], path.string() + ": eos_token_id", vocab_size);
    }
    if (ids.empty() && root.contains("text_config") && root["text_config"].contains("eos_token_id")) {
      ids = token_ids(root["text_config"]["eos_token_id"], path.string() + ": text_config: eos_token_id", vocab_size);
    }
    if (!ids.empty()) break;
  }
  return ids;
}

}  // namespace uberlm
