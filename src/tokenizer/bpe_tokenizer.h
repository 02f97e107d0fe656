#pragma once
// Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json (Qwen3.5, Qwen2/3, Llama-3,
// GPT-2, SmolLM2). Encoding follows the `tokenizers` pipeline:
//   added tokens (longest match first) -> normalizer -> pre-tokenizer -> BPE merges per word.
// The post_processor is not applied: encode() equals `tokenizers` encode(add_special_tokens=False)
// for template post-processors and equals it exactly for ByteLevel ones (Qwen). A BOS, where a model
// wants one, is the engine's business.
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace uberlm {

class PreTokenizerStep;

// Heterogeneous lookup so string_view keys need no temporary std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view text) const { return std::hash<std::string_view>{}(text); }
};
using TokenIds = std::unordered_map<std::string, int, StringHash, std::equal_to<>>;

// A byte-level BPE tokenizer given as data rather than tokenizer.json (a GGUF file's metadata).
struct BpeVocabulary {
  struct Added {
    int id;
    bool special;  // special: skipped by decode(skip_special) and left as text when !parse_special
  };
  std::string source;                       // names the origin in errors
  std::vector<std::string> tokens;          // id -> token in the byte-level alphabet
  std::vector<std::string> merges;          // "left right", highest priority first
  std::vector<Added> added;                 // tokens matched whole in the text, before BPE
  std::vector<std::string> split_patterns;  // regex splits (Isolated), applied in order before ByteLevel
  bool add_prefix_space = false;            // ByteLevel's flag; ByteLevel always splits with the GPT-2 regex
};

class BpeTokenizer {
 public:
  // Throws uberlm::Error naming the file and the component at fault.
  static std::unique_ptr<BpeTokenizer> load(const std::filesystem::path& tokenizer_json);
  // Throws uberlm::Error naming vocabulary.source and the token, merge or pattern at fault.
  static std::unique_ptr<BpeTokenizer> from_vocabulary(const BpeVocabulary& vocabulary);
  ~BpeTokenizer();

  // text must be valid UTF-8. parse_special=false leaves special tokens in the text as plain text
  // (non-special added tokens are still matched), like `tokenizers`' encode_special_tokens=True.
  std::vector<int> encode(std::string_view text, bool parse_special = true) const;
  // A lower bound on encode(text, parse_special).size() in linear time, without BPE merges: what a
  // server checks a prompt's length against before tokenising all of it. 0 where no bound is known
  // (a vocabulary not byte-level, or one lacking some byte's token). Throws as encode() does.
  size_t min_tokens(std::string_view text, bool parse_special = true) const;
  // Invalid UTF-8 from partial byte tokens becomes U+FFFD per maximal invalid subpart; ids without
  // a token are dropped (both as `tokenizers` does).
  std::string decode(const std::vector<int>& ids, bool skip_special = false) const;

  int vocab_size() const { return static_cast<int>(id_to_token_.size()); }
  std::optional<int> token_id(std::string_view token) const;
  // The token as stored in tokenizer.json (byte-level alphabet for model tokens). Throws on an id
  // outside [0, vocab_size) or a hole in the id space.
  std::string_view token_text(int id) const;
  bool is_special(int id) const;
  // The raw bytes a token stands for (not necessarily valid UTF-8); empty for an id without a
  // token, and for special tokens when skip_special.
  std::string_view token_bytes(int id, bool skip_special = false) const;

 private:
  struct AddedToken {
    std::string content;
    int id = 0;
    bool special = false;
    bool normalized = false;
    bool lstrip = false;
    bool rstrip = false;
  };
  // Byte trie over added-token contents for leftmost-longest matching.
  struct AddedTokenTrie {
    struct Node {
      std::unordered_map<unsigned char, int> children;
      int token = -1;  // index into added_tokens_ or -1
    };
    std::vector<Node> nodes{1};
    void insert(std::string_view content, int token_index);
  };
  struct Piece {
    std::string text;
    int added_token = -1;  // index into added_tokens_ when this piece is an added token
  };
  enum class Normalization { NFC, NFD, NFKC, NFKD };

  BpeTokenizer();
  void parse_normalizer(const nlohmann::json& json);
  void parse_pre_tokenizer(const nlohmann::json& json);
  void parse_model(const nlohmann::json& json);
  void parse_added_tokens(const nlohmann::json& json);
  void add_merge(size_t rank, const std::string& left, const std::string& right, const std::string& where);
  void add_added_token(AddedToken token);
  void finish_loading();

  void split_added(std::vector<Piece>& pieces, const AddedTokenTrie& trie, bool parse_special) const;
  std::string normalize(std::string_view text) const;
  // encode()'s first stage: the text split at added tokens and normalized between them.
  std::vector<Piece> split_and_normalize(std::string_view text, bool parse_special) const;
  void encode_word(std::string_view word, std::vector<int>& out) const;
  void merge_word(std::string_view word, std::vector<int>& out) const;

  std::string file_;
  std::vector<Normalization> normalizers_;
  std::vector<std::unique_ptr<PreTokenizerStep>> pre_tokenizers_;
  bool has_byte_level_ = false;
  bool byte_alphabet_complete_ = false;  // every byte's character is a model token
  size_t max_token_bytes_ = 1;  // of the longest token

  TokenIds vocab_;
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;  // (left id, right id) -> (rank, merged id)
  std::optional<int> unk_id_;
  bool ignore_merges_ = false;

  std::vector<AddedToken> added_tokens_;
  AddedTokenTrie raw_added_trie_;         // normalized=false tokens, matched on the input text
  AddedTokenTrie normalized_added_trie_;  // normalized=true tokens, matched after normalization

  std::vector<std::string> id_to_token_;
  std::vector<std::string> id_to_bytes_;
  enum class TokenKind : unsigned char { None, Model, Added, Special };
  std::vector<TokenKind> id_kind_;
  TokenIds added_ids_;

  // Words recur (" the", " of"); caching their ids skips the merge loop. Bounded, cleared when full.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int>, StringHash, std::equal_to<>> word_cache_;
};

// Streaming detokenizer: push ids as they are sampled; each returned chunk is valid UTF-8 (bytes of
// a character split across tokens are held back), and the chunks plus flush() concatenate to
// decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const BpeTokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  std::string push(int id);
  // Emits what is held back (an incomplete sequence becomes U+FFFD) and resets.
  std::string flush();

 private:
  const BpeTokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace uberlm
