#pragma once
// The tokenizer a GGUF file describes in its metadata (llama.cpp's keys): tokenizer.ggml.model
// "gpt2" (byte-level BPE) with tokens, merges, token types and special ids. The pre-tokenizer is
// chosen by tokenizer.ggml.pre exactly as llama.cpp chooses it; see gguf_tokenizer.cpp.
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "io/gguf.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

struct GgufTokenizer {
  std::unique_ptr<BpeTokenizer> tokenizer;
  std::optional<int> bos_id, eos_id;
  bool add_bos = false;       // tokenizer.ggml.add_bos_token: prompts start with bos_id
  std::string chat_template;  // tokenizer.chat_template (Jinja); empty when the file has none
};

// Throws Error naming the file and key at fault (an unsupported tokenizer model or pre-tokenizer,
// token/type arrays of different lengths, a special id outside the vocabulary, a bad merge).
GgufTokenizer load_gguf_tokenizer(const GgufFile& gguf);

}  // namespace uberlm
