// Model config parsing: the real shapes of each supported family, and broken configs, each of which
// must give an Error naming the source and the field or value at fault.
#include "model/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "expect_error.h"

namespace uberlm {
namespace {

using nlohmann::json;

// Qwen3.5-27B's text model, cut to 8 layers (3 linear : 1 full, twice).
json qwen3_5_text_config() {
  return json::parse(R"({
    "model_type": "qwen3_5_text", "hidden_size": 5120, "num_hidden_layers": 8, "intermediate_size": 17408,
    "num_attention_heads": 24, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 248320,
    "linear_num_key_heads": 16, "linear_num_value_heads": 48, "linear_key_head_dim": 128,
    "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "attn_output_gate": true, "max_position_embeddings": 262144, "tie_word_embeddings": false,
    "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention",
                    "linear_attention", "linear_attention", "linear_attention", "full_attention"],
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                        "mrope_interleaved": true, "mrope_section": [11, 11, 10]}})");
}

// SmolLM2-135M.
json llama_config() {
  return json::parse(R"({
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536,
    "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5,
    "rope_theta": 100000, "tie_word_embeddings": true, "max_position_embeddings": 8192, "hidden_act": "silu",
    "attention_bias": false, "rope_scaling": null})");
}

ModelConfig parse(const json& config) { return parse_model_config(config.dump(), "test/config.json"); }

// Expects parsing to throw an Error whose message holds the source name and every one of `needles`.
void expect_config_error(const std::string& text, std::vector<std::string> needles) {
  needles.push_back("test/config.json");
  expect_error_containing([&] { parse_model_config(text, "test/config.json"); }, needles);
}

void expect_hybrid_27b_shape(const ModelConfig& config) {
  EXPECT_EQ(config.model_type, "qwen3_5_text");
  EXPECT_EQ(config.hidden_size, 5120);
  EXPECT_EQ(config.num_layers, 8);
  EXPECT_EQ(config.intermediate_size, 17408);
  EXPECT_EQ(config.vocab_size, 248320);
  EXPECT_EQ(config.num_heads, 24);
  EXPECT_EQ(config.num_kv_heads, 4);
  EXPECT_EQ(config.head_dim, 256);
  EXPECT_EQ(config.rotary_dim, 64);
  EXPECT_FLOAT_EQ(config.rope_theta, 1e7f);
  EXPECT_FLOAT_EQ(config.rms_norm_eps, 1e-6f);
  EXPECT_EQ(config.norm_style, NormStyle::OnePlusWeight);
  EXPECT_TRUE(config.qk_norm);
  EXPECT_TRUE(config.attn_output_gate);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_FALSE(config.o_bias);
  EXPECT_FALSE(config.tie_word_embeddings);
  EXPECT_EQ(config.max_position_embeddings, 262144);
  EXPECT_EQ(config.delta_net_num_key_heads, 16);
  EXPECT_EQ(config.delta_net_num_value_heads, 48);
  EXPECT_EQ(config.delta_net_key_head_dim, 128);
  EXPECT_EQ(config.delta_net_value_head_dim, 128);
  EXPECT_EQ(config.delta_net_conv_kernel, 4);
  EXPECT_EQ(config.delta_net_conv_dim(), 2 * 16 * 128 + 48 * 128);
  EXPECT_EQ(config.q_proj_rows(), 24 * 256 * 2);
  const LayerKind L = LayerKind::GatedDeltaNet, F = LayerKind::FullAttention;
  EXPECT_EQ(config.layer_kinds, (std::vector<LayerKind>{L, L, L, F, L, L, L, F}));
  EXPECT_EQ(config.num_layers_of(F), 2);
}

TEST(Config, Qwen3_5Text) { expect_hybrid_27b_shape(parse(qwen3_5_text_config())); }

TEST(Config, Qwen3_5NestedTextConfig) {
  json text = qwen3_5_text_config();
  text.erase("tie_word_embeddings");
  json config = {{"model_type", "qwen3_5"},
                 {"architectures", {"Qwen3_5ForConditionalGeneration"}},
                 {"tie_word_embeddings", false},
                 {"text_config", text},
                 {"vision_config", {{"depth", 27}, {"hidden_size", 1152}}}};
  expect_hybrid_27b_shape(parse(config));
}

TEST(Config, Qwen3_5LayerKindsFromInterval) {
  json config = qwen3_5_text_config();
  config.erase("layer_types");
  config["full_attention_interval"] = 4;
  expect_hybrid_27b_shape(parse(config));
}

TEST(Config, Llama) {
  ModelConfig config = parse(llama_config());
  EXPECT_EQ(config.model_type, "llama");
  EXPECT_EQ(config.hidden_size, 576);
  EXPECT_EQ(config.num_layers, 30);
  EXPECT_EQ(config.intermediate_size, 1536);
  EXPECT_EQ(config.num_heads, 9);
  EXPECT_EQ(config.num_kv_heads, 3);
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.rotary_dim, 64);
  EXPECT_FLOAT_EQ(config.rope_theta, 1e5f);
  EXPECT_FLOAT_EQ(config.rms_norm_eps, 1e-5f);
  EXPECT_EQ(config.norm_style, NormStyle::Weight);
  EXPECT_FALSE(config.qk_norm);
  EXPECT_FALSE(config.attn_output_gate);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_FALSE(config.o_bias);
  EXPECT_TRUE(config.tie_word_embeddings);
  EXPECT_EQ(config.layer_kinds, std::vector<LayerKind>(30, LayerKind::FullAttention));
  EXPECT_EQ(config.delta_net_conv_dim(), 0);
}

TEST(Config, LlamaWithBias) {
  json text = llama_config();
  text["attention_bias"] = true;
  ModelConfig config = parse(text);
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_TRUE(config.o_bias);
}

TEST(Config, Qwen2) {
  // Qwen2.5-0.5B: q, k, v carry biases without saying so; o_proj has none.
  ModelConfig config = parse(json::parse(R"({
    "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
    "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": true, "max_position_embeddings": 32768,
    "hidden_act": "silu", "use_sliding_window": false})"));
  EXPECT_EQ(config.model_type, "qwen2");
  EXPECT_EQ(config.head_dim, 64);
  EXPECT_EQ(config.rotary_dim, 64);
  EXPECT_EQ(config.num_kv_heads, 2);
  EXPECT_FLOAT_EQ(config.rope_theta, 1e6f);
  EXPECT_EQ(config.norm_style, NormStyle::Weight);
  EXPECT_FALSE(config.qk_norm);
  EXPECT_TRUE(config.qkv_bias);
  EXPECT_FALSE(config.o_bias);
  EXPECT_TRUE(config.tie_word_embeddings);
}

TEST(Config, Qwen3) {
  // Qwen3-0.6B: head_dim 128 is not hidden_size / heads (64).
  ModelConfig config = parse(json::parse(R"({
    "model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "intermediate_size": 3072,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000, "tie_word_embeddings": true, "attention_bias": false,
    "max_position_embeddings": 40960, "hidden_act": "silu"})"));
  EXPECT_EQ(config.model_type, "qwen3");
  EXPECT_EQ(config.head_dim, 128);
  EXPECT_EQ(config.rotary_dim, 128);
  EXPECT_EQ(config.q_proj_rows(), 16 * 128);
  EXPECT_EQ(config.norm_style, NormStyle::Weight);
  EXPECT_TRUE(config.qk_norm);
  EXPECT_FALSE(config.attn_output_gate);
  EXPECT_FALSE(config.qkv_bias);
  EXPECT_EQ(config.layer_kinds.size(), 28u);
}

TEST(Config, BadJson) {
  expect_config_error(R"({"model_type": "llama", "hidden_size": )", {"invalid JSON"});
  expect_config_error("", {"invalid JSON"});
  expect_config_error(R"(["llama"])", {"expected a JSON object"});
}

TEST(Config, UnknownModelType) {
  json config = llama_config();
  config["model_type"] = "mistral";
  expect_config_error(config.dump(), {"unknown model_type 'mistral'"});
  config["model_type"] = "qwen3_5_moe";
  expect_config_error(config.dump(), {"unknown model_type 'qwen3_5_moe'"});
}

TEST(Config, MissingRequiredField) {
  for (const char* field : {"model_type", "hidden_size", "num_hidden_layers", "intermediate_size",
                            "num_attention_heads", "vocab_size"}) {
    json config = llama_config();
    config.erase(field);
    expect_config_error(config.dump(), {fmt::format("missing required field '{}'", field)});
  }
  json nested = {{"model_type", "qwen3_5"}, {"text_config", qwen3_5_text_config()}};
  nested["text_config"].erase("vocab_size");
  expect_config_error(nested.dump(), {"text_config", "missing required field 'vocab_size'"});
  expect_config_error(R"({"model_type": "qwen3_5"})", {"'text_config'"});
}

TEST(Config, WrongType) {
  struct Case {
    const char* field;
    json value;
    const char* needle;
  };
  const Case cases[] = {
      {"hidden_size", "576", "field 'hidden_size' must be a non-negative integer, got \"576\""},
      {"hidden_size", 576.5, "field 'hidden_size' must be a non-negative integer"},
      {"num_hidden_layers", -3, "field 'num_hidden_layers' must be a non-negative integer, got -3"},
      {"intermediate_size", 1LL << 40, "field 'intermediate_size' must be a non-negative integer"},
      {"model_type", 3, "field 'model_type' must be a string, got 3"},
      {"rms_norm_eps", "small", "field 'rms_norm_eps' must be a number"},
      {"tie_word_embeddings", "yes", "field 'tie_word_embeddings' must be true or false"},
      {"rope_scaling", json::array({1}), "field 'rope_scaling' must be an object"},
      {"hidden_act", "gelu", "hidden_act 'gelu' is not supported"},
      {"num_key_value_heads", 2, "must be a multiple of num_key_value_heads (2)"},
      {"num_attention_heads", 0, "field 'num_attention_heads' must be positive, got 0"},
      {"intermediate_size", 0, "field 'intermediate_size' must be positive, got 0"},
      {"head_dim", 0, "field 'head_dim' must be positive, got 0"},
      {"max_position_embeddings", 0, "field 'max_position_embeddings' must be positive"},
      {"rope_theta", -1, "field 'rope_theta' must be a positive finite number, got -1"},
      {"rms_norm_eps", 0, "field 'rms_norm_eps' must be a positive finite number, got 0"},
      {"eos_token_id", 49152, "eos_token_id 49152 is outside the vocabulary [0, 49152)"},
      {"eos_token_id", json::array({0, -1}), "eos_token_id -1 is outside the vocabulary"},
      {"bos_token_id", 4294967296LL, "bos_token_id 4294967296 is outside the vocabulary"},
      {"pad_token_id", "0", "pad_token_id must be a token id or a list of token ids, got \"0\""},
      {"use_sliding_window", true, "use_sliding_window = true is not supported"},
      {"mlp_bias", true, "mlp_bias = true is not supported"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.field);
    json config = llama_config();
    config[c.field] = c.value;
    expect_config_error(config.dump(), {c.needle});
  }
  json yarn = llama_config();
  yarn["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_config_error(yarn.dump(), {"rope type 'yarn' is not supported"});
}

TEST(Config, SpecialTokenIdsOfTheNestedTextConfigAreChecked) {
  json text = qwen3_5_text_config();
  text["eos_token_id"] = 248320;
  expect_config_error(json{{"model_type", "qwen3_5"}, {"text_config", text}}.dump(),
                      {"text_config", "eos_token_id 248320 is outside the vocabulary [0, 248320)"});
  json config = {{"model_type", "qwen3_5"}, {"text_config", qwen3_5_text_config()}, {"bos_token_id", -5}};
  expect_config_error(config.dump(), {"bos_token_id -5 is outside the vocabulary"});
}

// Every field the parser defaults, left out of a small config of each model type, gives what
// transformers builds from the same config (tests/oracle/fixtures_config_defaults.py).
TEST(Config, DefaultsAreTransformersDefaults) {
  const auto path = std::filesystem::path(UBERLM_FIXTURE_DIR) / "config_defaults" / "cases.json";
  std::ifstream file(path);
  ASSERT_TRUE(file) << "missing fixture " << path;
  const json cases = json::parse(file);
  ASSERT_GE(cases.size(), 30u);
  for (const json& c : cases) {
    const json& want = c["transformers"];
    SCOPED_TRACE(fmt::format("{} without {}", c["model_type"].get<std::string>(), c["dropped"].get<std::string>()));
    ModelConfig config;
    ASSERT_NO_THROW(config = parse(c["config"]));
    EXPECT_EQ(config.head_dim, want["head_dim"]);
    EXPECT_EQ(config.num_kv_heads, want["num_key_value_heads"]);
    EXPECT_EQ(config.rotary_dim, want["rotary_dim"]);
    EXPECT_EQ(config.attn_output_gate, want["attn_output_gate"]);
    EXPECT_EQ(config.rope_theta, want["rope_theta"].get<float>());
    EXPECT_EQ(config.rms_norm_eps, want["rms_norm_eps"].get<float>());
    EXPECT_EQ(config.qkv_bias, want["qkv_bias"]);
    EXPECT_EQ(config.o_bias, want["o_bias"]);
    EXPECT_EQ(config.tie_word_embeddings, want["tie_word_embeddings"]);
    EXPECT_EQ(config.max_position_embeddings, want["max_position_embeddings"]);
    std::vector<std::string> kinds;
    for (LayerKind kind : config.layer_kinds) kinds.push_back(layer_kind_name(kind));
    EXPECT_EQ(kinds, want["layer_kinds"].get<std::vector<std::string>>());
    if (want.contains("linear_num_key_heads")) {
      EXPECT_EQ(config.delta_net_num_key_heads, want["linear_num_key_heads"]);
      EXPECT_EQ(config.delta_net_num_value_heads, want["linear_num_value_heads"]);
      EXPECT_EQ(config.delta_net_key_head_dim, want["linear_key_head_dim"]);
      EXPECT_EQ(config.delta_net_value_head_dim, want["linear_value_head_dim"]);
      EXPECT_EQ(config.delta_net_conv_kernel, want["linear_conv_kernel_dim"]);
    }
  }
}

// generation_config.json's eos ids are stop tokens: each must be inside the vocabulary.
TEST(Config, StopTokenIdsOutsideTheVocabularyAreErrors) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("uberlm-stop-ids-{}", ::getpid());
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [2, 4096]})";
  expect_error_containing([&] { load_stop_token_ids(dir, 4096); },
                          {"generation_config.json: eos_token_id 4096 is outside the vocabulary [0, 4096)"});
  EXPECT_EQ(load_stop_token_ids(dir, 4097), (std::vector<int>{2, 4096}));
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": ["2"]})";
  expect_error_containing([&] { load_stop_token_ids(dir, 4096); }, {"must be a token id or a list of token ids"});
  std::filesystem::remove_all(dir);
}

TEST(Config, BadLayerTypes) {
  json config = qwen3_5_text_config();
  config["layer_types"].erase(0);
  expect_config_error(config.dump(), {"'layer_types' must be a list of 8 strings"});
  config = qwen3_5_text_config();
  config["layer_types"][2] = "sliding_attention";
  expect_config_error(config.dump(), {"layer_types[2] is 'sliding_attention'"});
  config = qwen3_5_text_config();
  config["linear_num_value_heads"] = 20;
  expect_config_error(config.dump(), {"linear_num_value_heads (20) must be a multiple of linear_num_key_heads (16)"});
  config = qwen3_5_text_config();
  config["rope_parameters"]["partial_rotary_factor"] = 1.5;
  expect_config_error(config.dump(), {"partial_rotary_factor", "partial_rotary_factor must be in (0, 1], got 1.5"});
}

}  // namespace
}  // namespace uberlm
