#include "tokenizer/gguf_tokenizer.h"

#include <array>

#include "core/error.h"

namespace uberlm {

namespace {

// llama.cpp's token types (tokenizer.ggml.token_type).
constexpr int32_t kControlToken = 3;      // special: <|im_start|>, <|endoftext|>
constexpr int32_t kUserDefinedToken = 4;  // added but not special

// The regex splits llama.cpp runs before the GPT-2 split for a tokenizer.ggml.pre value (llama-vocab.cpp:
// SMOLLM, STARCODER, REFACT, COMMAND_R, CODESHELL, EXAONE split every digit off first, the GPT-2 family
// splits with the GPT-2 regex alone). This equals the Hugging Face pipeline Digits(individual_digits) +
// ByteLevel that SmolLM2's own tokenizer.json declares. transformers' GGUF loader has no entry for
// "smollm" and so splits with the GPT-2 regex alone, which tokenizes digit runs differently ("2024" is
// one piece there, four here); we follow llama.cpp and the model's own tokenizer.
struct PreTokenizer {
  std::string_view name;
  bool split_digits;
};
constexpr std::array<PreTokenizer, 10> kPreTokenizers = {{
    {"default", false}, {"gpt-2", false}, {"mpt", false}, {"olmo", false}, {"smollm", true},
    {"starcoder", true}, {"refact", true}, {"command-r", true}, {"codeshell", true}, {"exaone", true},
}};

std::optional<int> special_id(const GgufFile& gguf, const std::string& key, size_t vocab_size) {
  if (!gguf.has(key)) return std::nullopt;
  return static_cast<int>(gguf.integer(key, 0, static_cast<int64_t>(vocab_size) - 1));
}

}  // namespace

GgufTokenizer load_gguf_tokenizer(const GgufFile& gguf) {
  const std::string file = gguf.path().string();
  const std::string model = gguf.string("tokenizer.ggml.model");
  if (model != "gpt2") {
    fail("gguf {}: key 'tokenizer.ggml.model': tokenizer '{}' is not supported (supported: gpt2, byte-level BPE)",
         file, model);
  }
  const std::string pre = gguf.has("tokenizer.ggml.pre") ? gguf.string("tokenizer.ggml.pre") : "default";
  const PreTokenizer* pre_tokenizer = nullptr;
  for (const PreTokenizer& candidate : kPreTokenizers) {
    if (candidate.name == pre) pre_tokenizer = &candidate;
  }
  if (pre_tokenizer == nullptr) {
    fail("gguf {}: key 'tokenizer.ggml.pre': pre-tokenizer '{}' is not supported (supported: default, gpt-2, mpt, "
         "olmo, smollm, starcoder, refact, command-r, codeshell, exaone)", file, pre);
  }

  BpeVocabulary vocabulary;
  vocabulary.source = fmt::format("gguf {}: tokenizer", file);
  for (const GgufValue& token : gguf.array("tokenizer.ggml.tokens", GgufType::String).values) {
    vocabulary.tokens.push_back(std::get<std::string>(token.data));
  }
  for (const GgufValue& merge : gguf.array("tokenizer.ggml.merges", GgufType::String).values) {
    vocabulary.merges.push_back(std::get<std::string>(merge.data));
  }
  if (gguf.has("tokenizer.ggml.token_type")) {
    const auto& types = gguf.array("tokenizer.ggml.token_type", GgufType::I32).values;
    if (types.size() != vocabulary.tokens.size()) {
      fail("gguf {}: key 'tokenizer.ggml.token_type' has {} entries for {} tokens", file, types.size(),
           vocabulary.tokens.size());
    }
    for (size_t id = 0; id < types.size(); ++id) {
      const int32_t type = std::get<int32_t>(types[id].data);
      if (type == kControlToken || type == kUserDefinedToken) {
        vocabulary.added.push_back({static_cast<int>(id), type == kControlToken});
      }
    }
  }
  if (pre_tokenizer->split_digits) vocabulary.split_patterns.push_back(R"(\p{N})");
  vocabulary.add_prefix_space =
      gguf.has("tokenizer.ggml.add_space_prefix") && gguf.boolean("tokenizer.ggml.add_space_prefix");

  GgufTokenizer result;
  result.tokenizer = BpeTokenizer::from_vocabulary(vocabulary);
  result.bos_id = special_id(gguf, "tokenizer.ggml.bos_token_id", vocabulary.tokens.size());
  result.eos_id = special_id(gguf, "tokenizer.ggml.eos_token_id", vocabulary.tokens.size());
  result.add_bos = gguf.has("tokenizer.ggml.add_bos_token") && gguf.boolean("tokenizer.ggml.add_bos_token");
  if (result.add_bos && !result.bos_id) {
    fail("gguf {}: key 'tokenizer.ggml.add_bos_token' is true but 'tokenizer.ggml.bos_token_id' is missing", file);
  }
  if (gguf.has("tokenizer.chat_template")) result.chat_template = gguf.string("tokenizer.chat_template");
  return result;
}

}  // namespace uberlm
