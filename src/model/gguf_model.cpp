#include "model/gguf_model.h"

#include <cstring>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "core/ggml_quants.h"

namespace uberlm {

namespace {

constexpr int64_t kMaxDimension = 1 << 30;

// Dequantises the tensors of one GGUF file into buffers owned by the Model and hands out views; records
// which tensors were used so that leftovers (biases, rope_freqs, ...) are reported instead of ignored.
class GgufWeightReader {
 public:
  GgufWeightReader(const GgufFile& gguf, Model& model) : gguf_(gguf), model_(model) {}

  bool has(const std::string& name) const { return gguf_.has_tensor(name); }

  // shape: ours, row-major [rows, cols] (the reverse of GGUF's ne).
  TensorView tensor(const std::string& name, const std::vector<int64_t>& shape) {
    std::vector<float>& buffer = dequantized(name, shape);
    return TensorView{DType::F32, shape, buffer.data()};
  }

  // attn_q / attn_k: undo llama.cpp's permutation. Within each head of head_dim rows, GGUF row 2j + i
  // holds Hugging Face row i * head_dim/2 + j (i in {0, 1}, j < head_dim/2).
  TensorView unpermuted(const std::string& name, const std::vector<int64_t>& shape, int heads) {
    std::vector<float>& buffer = dequantized(name, shape);
    const int64_t rows = shape[0], cols = shape[1], head_dim = rows / heads, half = head_dim / 2;
    std::vector<float> gguf_order(buffer);
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < 2; ++i) {
        for (int64_t j = 0; j < half; ++j) {
          const float* src = gguf_order.data() + (h * head_dim + 2 * j + i) * cols;
          std::memcpy(buffer.data() + (h * head_dim + i * half + j) * cols, src, cols * sizeof(float));
        }
      }
    }
    return TensorView{DType::F32, shape, buffer.data()};
  }

  LinearWeight linear(const std::string& module, const std::string& name, int64_t out_features, int64_t in_features) {
    return LinearWeight{module, tensor(name, {out_features, in_features}), std::nullopt, {}};
  }

  void reject_unused() const {
    for (const std::string& name : gguf_.header().tensor_order) {
      if (!used_.count(name)) {
        fail("gguf {}: tensor '{}' is not part of the llama graph we run (unsupported feature)",
             gguf_.path().string(), name);
      }
    }
  }

 private:
  std::vector<float>& dequantized(const std::string& name, const std::vector<int64_t>& shape) {
    const GgufTensorInfo& info = gguf_.tensor(name);
    // GGUF's ne lists dimensions innermost first: ours reversed.
    std::vector<int64_t> file_shape(info.ne.rbegin(), info.ne.rend());
    if (file_shape != shape) {
      std::vector<uint64_t> expected_ne(shape.rbegin(), shape.rend());
      fail("gguf {}: tensor '{}' has ne {}, expected {}", gguf_.path().string(), name, fmt::join(info.ne, " x "),
           fmt::join(expected_ne, " x "));
    }
    if (!ggml_can_dequantize(info.ggml_type())) {
      fail("gguf {}: tensor '{}' has type {}, which we cannot dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, "
           "Q4_1)", gguf_.path().string(), name, ggml_type_name(info.type));
    }
    used_.insert(name);
    std::vector<float>& buffer = model_.owned_tensors.emplace_back(info.elements);
    ggml_dequantize(info.ggml_type(), gguf_.tensor_data(name), static_cast<int64_t>(info.elements), buffer.data());
    return buffer;
  }

  const GgufFile& gguf_;
  Model& model_;
  std::set<std::string> used_;
};

}  // namespace

bool is_gguf_path(const std::filesystem::path& path) {
  return path.extension() == ".gguf" && std::filesystem::is_regular_file(path);
}

ModelConfig gguf_model_config(const GgufFile& gguf) {
  const std::string file = gguf.path().string();
  const std::string architecture = gguf.string("general.architecture");
  if (architecture != "llama") {
    fail("gguf {}: key 'general.architecture': '{}' is not supported (supported: llama)", file, architecture);
  }
  auto dimension = [&](const std::string& key) { return static_cast<int>(gguf.integer(key, 1, kMaxDimension)); };
  ModelConfig c;
  c.model_type = "llama";
  c.norm_style = NormStyle::Weight;
  c.hidden_size = dimension("llama.embedding_length");
  c.num_layers = dimension("llama.block_count");
  c.intermediate_size = dimension("llama.feed_forward_length");
  c.num_heads = dimension("llama.attention.head_count");
  c.num_kv_heads = gguf.has("llama.attention.head_count_kv") ? dimension("llama.attention.head_count_kv") : c.num_heads;
  if (c.num_heads % c.num_kv_heads != 0) {
    fail("gguf {}: key 'llama.attention.head_count_kv': {} KV heads do not divide {} heads", file, c.num_kv_heads,
         c.num_heads);
  }
  if (c.hidden_size % c.num_heads != 0 && !gguf.has("llama.attention.key_length")) {
    fail("gguf {}: key 'llama.attention.head_count': {} heads do not divide the hidden size {}", file, c.num_heads,
         c.hidden_size);
  }
  c.head_dim = gguf.has("llama.attention.key_length") ? dimension("llama.attention.key_length")
                                                      : c.hidden_size / c.num_heads;
  if (gguf.has("llama.attention.value_length") && dimension("llama.attention.value_length") != c.head_dim) {
    fail("gguf {}: key 'llama.attention.value_length' differs from the key length {}", file, c.head_dim);
  }
  if (c.head_dim % 2 != 0) fail("gguf {}: head dim {} is odd; RoPE needs pairs", file, c.head_dim);
  c.rotary_dim = gguf.has("llama.rope.dimension_count") ? dimension("llama.rope.dimension_count") : c.head_dim;
  if (c.rotary_dim != c.head_dim) {
    fail("gguf {}: key 'llama.rope.dimension_count': partial rotary ({} of {} dims) is not supported for llama", file,
         c.rotary_dim, c.head_dim);
  }
  if (gguf.has("llama.rope.scaling.type") && gguf.string("llama.rope.scaling.type") != "none") {
    fail("gguf {}: key 'llama.rope.scaling.type': rope scaling '{}' is not supported", file,
         gguf.string("llama.rope.scaling.type"));
  }
  c.rope_theta = gguf.has("llama.rope.freq_base") ? static_cast<float>(gguf.number("llama.rope.freq_base")) : 10000.0f;
  c.rms_norm_eps = static_cast<float>(gguf.number("llama.attention.layer_norm_rms_epsilon"));
  if (!(c.rope_theta > 0.0f) || !(c.rms_norm_eps > 0.0f) || !(c.rms_norm_eps < 1.0f)) {
    fail("gguf {}: rope freq_base {} or rms epsilon {} out of range", file, c.rope_theta, c.rms_norm_eps);
  }
  c.max_position_embeddings =
      gguf.has("llama.context_length") ? dimension("llama.context_length") : 0;
  c.vocab_size = gguf.has("llama.vocab_size")
                     ? dimension("llama.vocab_size")
                     : static_cast<int>(gguf.array("tokenizer.ggml.tokens", GgufType::String).values.size());
  c.tie_word_embeddings = !gguf.has_tensor("output.weight");
  c.layer_kinds.assign(c.num_layers, LayerKind::FullAttention);
  return c;
}

std::unique_ptr<Model> load_gguf_model(const std::filesystem::path& file) {
  auto gguf = GgufFile::open(file);
  auto model = std::make_unique<Model>();
  model->dir = file;
  model->config = gguf_model_config(*gguf);
  const ModelConfig& c = model->config;
  GgufWeightReader reader(*gguf, *model);
  ModelWeights& weights = model->weights;
  weights.embed_tokens = reader.tensor("token_embd.weight", {c.vocab_size, c.hidden_size});
  weights.final_norm = reader.tensor("output_norm.weight", {c.hidden_size});
  weights.lm_head = c.tie_word_embeddings ? LinearWeight{"embed_tokens", weights.embed_tokens, std::nullopt, {}}
                                          : reader.linear("lm_head", "output.weight", c.vocab_size, c.hidden_size);
  const int64_t q_rows = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_rows = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string blk = fmt::format("blk.{}.", i), ours = fmt::format("layers.{}.", i);
    LayerWeights layer;
    layer.kind = LayerKind::FullAttention;
    layer.input_norm = reader.tensor(blk + "attn_norm.weight", {c.hidden_size});
    layer.post_attention_norm = reader.tensor(blk + "ffn_norm.weight", {c.hidden_size});
    AttentionWeights& a = layer.attention;
    a.q_proj = {ours + "self_attn.q_proj", reader.unpermuted(blk + "attn_q.weight", {q_rows, c.hidden_size}, c.num_heads), std::nullopt, {}};
    a.k_proj = {ours + "self_attn.k_proj",
                reader.unpermuted(blk + "attn_k.weight", {kv_rows, c.hidden_size}, c.num_kv_heads), std::nullopt, {}};
    a.v_proj = reader.linear(ours + "self_attn.v_proj", blk + "attn_v.weight", kv_rows, c.hidden_size);
    a.o_proj = reader.linear(ours + "self_attn.o_proj", blk + "attn_output.weight", c.hidden_size, q_rows);
    layer.mlp.gate_proj = reader.linear(ours + "mlp.gate_proj", blk + "ffn_gate.weight", c.intermediate_size, c.hidden_size);
    layer.mlp.up_proj = reader.linear(ours + "mlp.up_proj", blk + "ffn_up.weight", c.intermediate_size, c.hidden_size);
    layer.mlp.down_proj = reader.linear(ours + "mlp.down_proj", blk + "ffn_down.weight", c.hidden_size, c.intermediate_size);
    weights.layers.push_back(std::move(layer));
  }
  reader.reject_unused();
  if (gguf->has("tokenizer.ggml.eos_token_id")) {
    model->stop_token_ids.push_back(
        static_cast<int>(gguf->integer("tokenizer.ggml.eos_token_id", 0, c.vocab_size - 1)));
  }
  return model;
}

}  // namespace uberlm
