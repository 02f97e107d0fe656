#include "model/config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "core/error.h"

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
  float optional_float(const char* key, float fallback) const {
    if (!has(key)) return fallback;
    const json& value = object_.at(key);
    if (!value.is_number()) fail("{}: field '{}' must be a number, got {}", source_, key, describe(value));
    return value.get<float>();
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
  const json& object_;
  std::string source_;
};

struct FamilyTraits {
  const char* model_type;
  NormStyle norm_style;
  bool qk_norm;
  bool hybrid;
  bool qkv_bias_default;
};

constexpr FamilyTraits kFamilies[] = {
    {"qwen3_5_text", NormStyle::OnePlusWeight, true, true, false},
    {"llama", NormStyle::Weight, false, false, false},
    {"qwen2", NormStyle::Weight, false, false, true},
    {"qwen3", NormStyle::Weight, true, false, false},
};

const FamilyTraits& family_of(const std::string& model_type, const std::string& source) {
  for (const auto& family : kFamilies) {
    if (model_type == family.model_type) return family;
  }
  fail("{}: unknown model_type '{}' (supported: qwen3_5, qwen3_5_text, llama, qwen2, qwen3)", source, model_type);
}

// RoPE settings live in `rope_parameters` (transformers >= 5) or at the top level (older configs).
void read_rope(const FieldReader& fields, ModelConfig& config) {
  float partial = fields.optional_float("partial_rotary_factor", 1.0f);
  config.rope_theta = fields.optional_float("rope_theta", config.rope_theta);
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!fields.has(key)) continue;
    const json& rope = fields.at(key);
    if (!rope.is_object()) fail("{}: field '{}' must be an object", fields.source(), key);
    FieldReader rope_fields(rope, fields.source() + ": " + key);
    config.rope_theta = rope_fields.optional_float("rope_theta", config.rope_theta);
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
  int interval = fields.required_int("full_attention_interval");
  if (interval <= 0) fail("{}: field 'full_attention_interval' must be positive", fields.source());
  for (int i = 0; i < config.num_layers; ++i) {
    config.layer_kinds[i] = (i + 1) % interval == 0 ? LayerKind::FullAttention : LayerKind::GatedDeltaNet;
  }
}

void read_gated_delta_net(const FieldReader& fields, ModelConfig& config) {
  config.delta_net_num_key_heads = fields.required_int("linear_num_key_heads");
  config.delta_net_num_value_heads = fields.required_int("linear_num_value_heads");
  config.delta_net_key_head_dim = fields.required_int("linear_key_head_dim");
  config.delta_net_value_head_dim = fields.required_int("linear_value_head_dim");
  config.delta_net_conv_kernel = fields.required_int("linear_conv_kernel_dim");
  if (config.delta_net_num_key_heads == 0 || config.delta_net_num_value_heads % config.delta_net_num_key_heads != 0) {
    fail("{}: linear_num_value_heads ({}) must be a multiple of linear_num_key_heads ({})", fields.source(),
         config.delta_net_num_value_heads, config.delta_net_num_key_heads);
  }
  if (config.delta_net_conv_kernel < 1) fail("{}: linear_conv_kernel_dim must be at least 1", fields.source());
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
  config.hidden_size = fields.required_int("hidden_size");
  config.num_layers = fields.required_int("num_hidden_layers");
  config.intermediate_size = fields.required_int("intermediate_size");
  config.vocab_size = fields.required_int("vocab_size");
  config.num_heads = fields.required_int("num_attention_heads");
  config.num_kv_heads = fields.optional_int("num_key_value_heads", config.num_heads);
  if (config.num_heads == 0 || config.hidden_size == 0 || config.num_layers == 0 || config.vocab_size == 0) {
    fail("{}: hidden_size, num_hidden_layers, num_attention_heads and vocab_size must be positive", text_source);
  }
  config.head_dim = fields.optional_int("head_dim", config.hidden_size / config.num_heads);
  if (config.num_kv_heads == 0 || config.num_heads % config.num_kv_heads != 0) {
    fail("{}: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", text_source,
         config.num_heads, config.num_kv_heads);
  }
  config.rms_norm_eps = fields.optional_float("rms_norm_eps", 1e-6f);
  config.tie_word_embeddings = fields.optional_bool("tie_word_embeddings", tie);
  config.max_position_embeddings = fields.optional_int("max_position_embeddings", 0);
  config.norm_style = family.norm_style;
  config.qk_norm = family.qk_norm;
  config.qkv_bias = fields.optional_bool("attention_bias", family.qkv_bias_default);
  config.o_bias = model_type != "qwen2" && config.qkv_bias;  // qwen2 biases q, k, v only
  config.attn_output_gate = family.hybrid && fields.optional_bool("attn_output_gate", true);
  check_activation(fields);
  read_rope(fields, config);
  read_layer_kinds(fields, family.hybrid, config);
  if (family.hybrid) read_gated_delta_net(fields, config);
  return config;
}

namespace {
std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail("cannot open {}", path.string());
  std::stringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

void append_token_ids(const json& value, std::vector<int>& ids) {
  if (value.is_number_integer()) {
    ids.push_back(value.get<int>());
  } else if (value.is_array()) {
    for (const auto& item : value) {
      if (item.is_number_integer()) ids.push_back(item.get<int>());
    }
  }
}
}  // namespace

ModelConfig load_model_config(const std::filesystem::path& model_dir) {
  auto path = model_dir / "config.json";
  return parse_model_config(read_text_file(path), path.string());
}

std::vector<int> load_stop_token_ids(const std::filesystem::path& model_dir) {
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
    if (root.contains("eos_token_id")) append_token_ids(root["eos_token_id"], ids);
    if (ids.empty() && root.contains("text_config") && root["text_config"].contains("eos_token_id")) {
      append_token_ids(root["text_config"]["eos_token_id"], ids);
    }
    if (!ids.empty()) break;
  }
  return ids;
}

}  // namespace uberlm
