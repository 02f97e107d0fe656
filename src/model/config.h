#pragma once
// Model configuration read from a Hugging Face config.json. One decoder serves the Qwen3.5 hybrid
// and the dense Llama family; the differences are the explicit flags below, never the model name.
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/norm_style.h"

namespace uberlm {

enum class LayerKind { FullAttention, GatedDeltaNet };
const char* layer_kind_name(LayerKind kind);

struct ModelConfig {
  std::string model_type;  // as written in config.json (text_config's for qwen3_5)
  int hidden_size = 0;
  int num_layers = 0;
  int intermediate_size = 0;
  int vocab_size = 0;
  float rms_norm_eps = 1e-6f;
  bool tie_word_embeddings = false;
  NormStyle norm_style = NormStyle::Weight;
  std::vector<LayerKind> layer_kinds;  // one per layer

  // Full attention.
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;  // the first rotary_dim dims of each head are rotated (NeoX pairing)
  float rope_theta = 10000.0f;
  bool qk_norm = false;           // q_norm / k_norm over head_dim
  bool attn_output_gate = false;  // q_proj also yields a per-head sigmoid gate
  bool qkv_bias = false;
  bool o_bias = false;
  int max_position_embeddings = 0;

  // Gated DeltaNet (config.json's linear_* keys); zero when the model has none.
  int delta_net_num_key_heads = 0;
  int delta_net_num_value_heads = 0;
  int delta_net_key_head_dim = 0;
  int delta_net_value_head_dim = 0;
  int delta_net_conv_kernel = 0;

  int delta_net_key_dim() const { return delta_net_num_key_heads * delta_net_key_head_dim; }
  int delta_net_value_dim() const { return delta_net_num_value_heads * delta_net_value_head_dim; }
  int delta_net_conv_dim() const { return 2 * delta_net_key_dim() + delta_net_value_dim(); }
  int q_proj_rows() const { return num_heads * head_dim * (attn_output_gate ? 2 : 1); }
  int num_layers_of(LayerKind kind) const;
};

// Parses config.json text; `source` names the file in errors. Throws Error on an unknown
// model_type or a missing or mistyped required field, naming it.
ModelConfig parse_model_config(const std::string& text, const std::string& source);
ModelConfig load_model_config(const std::filesystem::path& model_dir);

// Stop token ids from generation_config.json (eos_token_id, int or list), falling back to the
// config's eos_token_id. Empty when neither names one; throws Error naming the file for an id outside
// [0, vocab_size).
std::vector<int> load_stop_token_ids(const std::filesystem::path& model_dir, int vocab_size);

}  // namespace uberlm
