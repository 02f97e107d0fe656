#include "tokenizer/bpe_tokenizer.h"

#include <array>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <queue>

#include <nlohmann/json.hpp>
#include <pcre2.h>
#include <utf8proc.h>

#include "core/error.h"
#include "core/regular_file.h"

namespace uberlm {

using nlohmann::json;

namespace {

// ---- UTF-8 -------------------------------------------------------------------------------------

enum class Utf8Kind { Valid, Invalid, Truncated };
struct Utf8Step {
  size_t length;  // Valid: the sequence; Invalid: its maximal invalid subpart; Truncated: what is there
  Utf8Kind kind;
};

// One step of a UTF-8 scan at text[0], with the well-formed byte ranges of Unicode Table 3-7, so an
// invalid sequence is cut at its maximal subpart as Rust's from_utf8_lossy (and `tokenizers`) does.
Utf8Step next_utf8(const unsigned char* text, size_t size) {
  const unsigned char lead = text[0];
  if (lead < 0x80) return {1, Utf8Kind::Valid};
  size_t continuation = 0;
  unsigned char low = 0x80, high = 0xBF;  // range of the first continuation byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    continuation = 1;
  } else if (lead == 0xE0) {
    continuation = 2, low = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    continuation = 2;
  } else if (lead == 0xED) {
    continuation = 2, high = 0x9F;
  } else if (lead == 0xF0) {
    continuation = 3, low = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    continuation = 3;
  } else if (lead == 0xF4) {
    continuation = 3, high = 0x8F;
  } else {
    return {1, Utf8Kind::Invalid};
  }
  for (size_t k = 1; k <= continuation; ++k) {
    if (k >= size) return {k, Utf8Kind::Truncated};
    if (text[k] < low || text[k] > high) return {k, Utf8Kind::Invalid};
    low = 0x80, high = 0xBF;
  }
  return {continuation + 1, Utf8Kind::Valid};
}

// Appends bytes to out as valid UTF-8, U+FFFD per maximal invalid subpart. Unless final, a truncated
// sequence at the end is left unconsumed. Returns the bytes consumed.
size_t append_utf8_lossy(std::string_view bytes, bool final, std::string& out) {
  const auto* data = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Utf8Step step = next_utf8(data + pos, bytes.size() - pos);
    if (step.kind == Utf8Kind::Truncated && !final) break;
    if (step.kind == Utf8Kind::Valid) {
      out.append(bytes.substr(pos, step.length));
    } else {
      out.append("\xEF\xBF\xBD");
    }
    pos += step.length;
  }
  return pos;
}

std::optional<size_t> first_invalid_utf8(std::string_view text) {
  const auto* data = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t pos = 0; pos < text.size();) {
    const Utf8Step step = next_utf8(data + pos, text.size() - pos);
    if (step.kind != Utf8Kind::Valid) return pos;
    pos += step.length;
  }
  return std::nullopt;
}

// Decodes one code point of valid UTF-8 at text[pos]; advances pos.
char32_t decode_code_point(std::string_view text, size_t& pos) {
  utf8proc_int32_t code_point = 0;
  const utf8proc_ssize_t length = utf8proc_iterate(
      reinterpret_cast<const utf8proc_uint8_t*>(text.data() + pos),
      static_cast<utf8proc_ssize_t>(text.size() - pos), &code_point);
  pos += static_cast<size_t>(length > 0 ? length : 1);
  return static_cast<char32_t>(code_point);
}

// Rust's char::is_whitespace (Unicode White_Space), which `tokenizers` uses for lstrip/rstrip.
bool is_white_space(char32_t c) {
  if ((c >= 0x09 && c <= 0x0D) || c == 0x85) return true;
  const utf8proc_category_t category = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return category == UTF8PROC_CATEGORY_ZS || category == UTF8PROC_CATEGORY_ZL ||
         category == UTF8PROC_CATEGORY_ZP;
}

bool is_ascii(std::string_view text) {
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

// ---- GPT-2 byte-level alphabet ------------------------------------------------------------------

// bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes for the code
// points 256, 257, ... in byte order, so every byte is one printable character.
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_text;
  std::array<int, 324> code_point_to_byte;  // -1 where a code point is no byte's character

  ByteAlphabet() {
    code_point_to_byte.fill(-1);
    int next_extra = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
                             (byte >= 0xAE && byte <= 0xFF);
      const int code_point = printable ? byte : next_extra++;
      utf8proc_uint8_t encoded[4];
      const auto length = utf8proc_encode_char(code_point, encoded);
      byte_to_text[byte].assign(reinterpret_cast<const char*>(encoded), static_cast<size_t>(length));
      code_point_to_byte[code_point] = byte;
    }
  }

  std::string encode(std::string_view bytes) const {
    std::string out;
    out.reserve(bytes.size() * 2);
    for (const char byte : bytes) out += byte_to_text[static_cast<unsigned char>(byte)];
    return out;
  }

  // The ByteLevel decoder's rule per token: its bytes if every character is in the alphabet,
  // otherwise the token's own UTF-8 text.
  std::string decode(std::string_view token) const {
    std::string out;
    for (size_t pos = 0; pos < token.size();) {
      const char32_t c = decode_code_point(token, pos);
      if (c >= code_point_to_byte.size() || code_point_to_byte[c] < 0) return std::string(token);
      out += static_cast<char>(code_point_to_byte[c]);
    }
    return out;
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

// ---- Regex ----------------------------------------------------------------------------------------

class Pcre2Regex {
 public:
  // where: the tokenizer.json and component, for the error message.
  Pcre2Regex(const std::string& pattern, const std::string& where) {
    int error_code = 0;
    PCRE2_SIZE error_offset = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &error_code, &error_offset, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error_code, message, sizeof(message));
      fail("{}: regex /{}/ does not compile at offset {}: {}", where, pattern, error_offset,
           reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is absent
  }
  ~Pcre2Regex() { pcre2_code_free(code_); }
  Pcre2Regex(const Pcre2Regex&) = delete;
  Pcre2Regex& operator=(const Pcre2Regex&) = delete;

  // Splits text at each match, keeping matches and the gaps between them as pieces ("Isolated").
  // text is valid UTF-8 (checked once at encode entry).
  void split_isolated(std::string_view text, std::vector<std::string>& out) const {
    pcre2_match_data* match = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t gap_start = 0, search = 0;
    while (search < text.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                                 search, PCRE2_NO_UTF_CHECK, match, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        pcre2_match_data_free(match);
        fail("tokenizer regex failed with PCRE2 error {}", rc);
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      const size_t start = ovector[0], end = ovector[1];
      if (start > gap_start) out.emplace_back(text.substr(gap_start, start - gap_start));
      if (end > start) {
        out.emplace_back(text.substr(start, end - start));
        gap_start = search = end;
      } else {
        // An empty match yields no piece; step one character past it.
        search = end;
        decode_code_point(text, search);
        gap_start = start;
      }
    }
    if (gap_start < text.size()) out.emplace_back(text.substr(gap_start));
    pcre2_match_data_free(match);
  }

 private:
  pcre2_code* code_ = nullptr;
};

std::string escape_regex_literal(std::string_view literal) {
  std::string out;
  for (const char c : literal) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x80 && !std::isalnum(byte)) out += '\\';
    out += c;
  }
  return out;
}

// The regex of GPT-2 that ByteLevel(use_regex=true) splits with.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

const json& require(const json& object, const char* key, const std::string& where) {
  if (!object.is_object() || !object.contains(key)) fail("{}: missing \"{}\"", where, key);
  return object.at(key);
}

bool flag(const json& object, const char* key, bool fallback) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? fallback : it->get<bool>();
}

}  // namespace

// ---- Pre-tokenizer steps ----------------------------------------------------------------------------

// One pre-tokenizer: replaces each piece by its sub-pieces, in order.
class PreTokenizerStep {
 public:
  virtual ~PreTokenizerStep() = default;
  virtual void apply(const std::string& piece, std::vector<std::string>& out) const = 0;
};

namespace {

class RegexSplitStep final : public PreTokenizerStep {
 public:
  RegexSplitStep(const std::string& pattern, const std::string& where) : regex_(pattern, where) {}
  void apply(const std::string& piece, std::vector<std::string>& out) const override {
    regex_.split_isolated(piece, out);
  }

 private:
  Pcre2Regex regex_;
};

// Maps every byte to its alphabet character, after an optional leading space and GPT-2 split.
class ByteLevelStep final : public PreTokenizerStep {
 public:
  ByteLevelStep(bool add_prefix_space, bool use_regex, const std::string& where)
      : add_prefix_space_(add_prefix_space) {
    if (use_regex) gpt2_regex_ = std::make_unique<Pcre2Regex>(kGpt2Pattern, where);
  }
  void apply(const std::string& piece, std::vector<std::string>& out) const override {
    const std::string prefixed =
        add_prefix_space_ && !piece.starts_with(' ') ? " " + piece : piece;
    if (!gpt2_regex_) {
      out.push_back(byte_alphabet().encode(prefixed));
      return;
    }
    std::vector<std::string> words;
    gpt2_regex_->split_isolated(prefixed, words);
    for (const std::string& word : words) out.push_back(byte_alphabet().encode(word));
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Pcre2Regex> gpt2_regex_;
};

// Ids index the id -> token table, so they are bounded: a corrupt id must not make that table take gigabytes.
// 2^22 is 16 times the largest vocabulary shipped (262,144 ids).
constexpr uint64_t kMaxTokenId = (1u << 22) - 1;

// An id as written: read unsigned, so an id past 2^31 is reported as written, not wrapped to a negative one.
int parse_token_id(const json& value, const std::string& where, const std::string& token) {
  if (!value.is_number_integer()) fail("{}: token '{}' has id {}, not an integer", where, token, value.dump());
  if (!value.is_number_unsigned()) fail("{}: token '{}' has negative id {}", where, token, value.dump());
  if (value.get<uint64_t>() > kMaxTokenId) {
    fail("{}: token '{}' has id {}, above the largest supported id {}", where, token, value.dump(), kMaxTokenId);
  }
  return static_cast<int>(value.get<uint64_t>());
}

}  // namespace

// ---- Loading ------------------------------------------------------------------------------------

BpeTokenizer::BpeTokenizer() = default;
BpeTokenizer::~BpeTokenizer() = default;

void BpeTokenizer::AddedTokenTrie::insert(std::string_view content, int token_index) {
  int node = 0;
  for (const char c : content) {
    const auto byte = static_cast<unsigned char>(c);
    auto it = nodes[node].children.find(byte);
    if (it == nodes[node].children.end()) {
      it = nodes[node].children.emplace(byte, static_cast<int>(nodes.size())).first;
      nodes.emplace_back();
    }
    node = it->second;
  }
  nodes[node].token = token_index;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::load(const std::filesystem::path& tokenizer_json) {
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  tokenizer->file_ = tokenizer_json.string();
  const std::string& file = tokenizer->file_;
  require_regular_file(tokenizer_json);
  std::ifstream stream(tokenizer_json, std::ios::binary);
  if (!stream) fail("{}: cannot open tokenizer file", file);
  json config;
  try {
    config = json::parse(stream);
  } catch (const json::exception& error) {
    fail("{}: not valid JSON: {}", file, error.what());
  }
  if (!config.is_object()) fail("{}: top level is not a JSON object", file);
  try {
    tokenizer->parse_normalizer(config.value("normalizer", json()));
    tokenizer->parse_model(require(config, "model", file));
    tokenizer->parse_added_tokens(config.value("added_tokens", json::array()));
    tokenizer->parse_pre_tokenizer(config.value("pre_tokenizer", json()));
    if (!tokenizer->has_byte_level_) {
      fail("{}: pre_tokenizer has no ByteLevel step; only byte-level BPE is supported", file);
    }
    const json decoder = config.value("decoder", json());
    if (!decoder.is_object() || decoder.value("type", "") != "ByteLevel") {
      fail("{}: unsupported decoder {} (only ByteLevel is supported)", file,
           decoder.is_object() ? decoder.value("type", "without type") : decoder.dump());
    }
  } catch (const json::exception& error) {
    fail("{}: malformed tokenizer field: {}", file, error.what());
  }
  tokenizer->finish_loading();
  return tokenizer;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_vocabulary(const BpeVocabulary& vocabulary) {
  std::unique_ptr<BpeTokenizer> tokenizer(new BpeTokenizer());
  tokenizer->file_ = vocabulary.source;
  const std::string& where = tokenizer->file_;
  tokenizer->vocab_.reserve(vocabulary.tokens.size());
  tokenizer->id_to_token_ = vocabulary.tokens;
  tokenizer->id_kind_.assign(vocabulary.tokens.size(), TokenKind::Model);
  for (size_t id = 0; id < vocabulary.tokens.size(); ++id) {
    // A token listed twice keeps its first id for encoding; both ids decode to it.
    tokenizer->vocab_.emplace(vocabulary.tokens[id], static_cast<int>(id));
  }
  tokenizer->merges_.reserve(vocabulary.merges.size());
  for (size_t rank = 0; rank < vocabulary.merges.size(); ++rank) {
    const std::string& line = vocabulary.merges[rank];
    const size_t space = line.find(' ');
    if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
      fail("{}: merge {} '{}' is not two tokens separated by one space", where, rank, line);
    }
    tokenizer->add_merge(rank, line.substr(0, space), line.substr(space + 1), where);
  }
  for (const BpeVocabulary::Added& added : vocabulary.added) {
    if (added.id < 0 || static_cast<size_t>(added.id) >= vocabulary.tokens.size()) {
      fail("{}: added token id {} is outside the {}-token vocabulary", where, added.id, vocabulary.tokens.size());
    }
    const std::string& content = vocabulary.tokens[static_cast<size_t>(added.id)];
    if (content.empty()) fail("{}: added token {} is empty", where, added.id);
    tokenizer->add_added_token(AddedToken{content, added.id, added.special, /*normalized=*/false});
  }
  for (const std::string& pattern : vocabulary.split_patterns) {
    tokenizer->pre_tokenizers_.push_back(std::make_unique<RegexSplitStep>(pattern, where + ": split"));
  }
  tokenizer->pre_tokenizers_.push_back(
      std::make_unique<ByteLevelStep>(vocabulary.add_prefix_space, /*use_regex=*/true, where + ": ByteLevel"));
  tokenizer->has_byte_level_ = true;
  tokenizer->finish_loading();
  return tokenizer;
}

void BpeTokenizer::finish_loading() {
  id_to_bytes_.reserve(id_to_token_.size());
  for (const std::string& token : id_to_token_) id_to_bytes_.push_back(byte_alphabet().decode(token));
  for (const std::string& bytes : id_to_bytes_) max_token_bytes_ = std::max(max_token_bytes_, bytes.size());
  byte_alphabet_complete_ = true;
  for (const std::string& character : byte_alphabet().byte_to_text) {
    byte_alphabet_complete_ = byte_alphabet_complete_ && vocab_.find(character) != vocab_.end();
  }
}

void BpeTokenizer::parse_model(const json& model) {
  const std::string where = file_ + ": model";
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") fail("{}: unsupported model type '{}' (only BPE is supported)", where, type);
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() != 0.0) {
    fail("{}: BPE dropout is not supported", where);
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && !model[key].get<std::string>().empty()) {
      fail("{}: {} is not supported", where, key);
    }
  }
  if (flag(model, "byte_fallback", false)) fail("{}: byte_fallback is not supported", where);
  ignore_merges_ = flag(model, "ignore_merges", false);

  const json& vocab = require(model, "vocab", where);
  if (!vocab.is_object()) fail("{}: vocab is not an object", where);
  int max_id = -1;
  vocab_.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    const int id = parse_token_id(id_json, where, token);
    vocab_.emplace(token, id);
    max_id = std::max(max_id, id);
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  id_kind_.assign(id_to_token_.size(), TokenKind::None);
  for (const auto& [token, id] : vocab_) {
    id_to_token_[static_cast<size_t>(id)] = token;
    id_kind_[static_cast<size_t>(id)] = TokenKind::Model;
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto it = vocab_.find(model["unk_token"].get<std::string>());
    if (it != vocab_.end()) unk_id_ = it->second;
  }

  const json& merges = require(model, "merges", where);
  if (!merges.is_array()) fail("{}: merges is not an array", where);
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {
      const std::string line = merge.get<std::string>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        fail("{}: merge {} '{}' is not two tokens separated by one space", where, rank, line);
      }
      left = line.substr(0, space), right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2) {
      left = merge[0].get<std::string>(), right = merge[1].get<std::string>();
    } else {
      fail("{}: merge {} is neither \"a b\" nor [a, b]", where, rank);
    }
    add_merge(rank, left, right, where);
  }
}

void BpeTokenizer::add_merge(size_t rank, const std::string& left, const std::string& right,
                             const std::string& where) {
  const auto left_it = vocab_.find(left), right_it = vocab_.find(right);
  const auto merged_it = vocab_.find(left + right);
  if (left_it == vocab_.end() || right_it == vocab_.end() || merged_it == vocab_.end()) {
    fail("{}: merge {} ('{}', '{}') names a token missing from the vocab", where, rank, left, right);
  }
  const uint64_t key = (static_cast<uint64_t>(left_it->second) << 32) | static_cast<uint32_t>(right_it->second);
  merges_.emplace(key, std::pair<int, int>(static_cast<int>(rank), merged_it->second));
}

void BpeTokenizer::parse_added_tokens(const json& tokens) {
  const std::string where = file_ + ": added_tokens";
  if (!tokens.is_array()) fail("{}: not an array", where);
  for (const json& entry : tokens) {
    AddedToken token;
    token.content = require(entry, "content", where).get<std::string>();
    token.id = parse_token_id(require(entry, "id", where), where, token.content);
    if (token.content.empty()) fail("{}: token {} has empty content", where, token.id);
    token.special = flag(entry, "special", false);
    token.normalized = flag(entry, "normalized", !token.special);
    token.lstrip = flag(entry, "lstrip", false);
    token.rstrip = flag(entry, "rstrip", false);
    if (flag(entry, "single_word", false)) {
      fail("{}: '{}' has single_word=true, which is not supported", where, token.content);
    }
    add_added_token(std::move(token));
  }
}

void BpeTokenizer::add_added_token(AddedToken token) {
  const auto index = static_cast<int>(added_tokens_.size());
  if (token.normalized) {
    normalized_added_trie_.insert(normalize(token.content), index);
  } else {
    raw_added_trie_.insert(token.content, index);
  }
  const auto slot = static_cast<size_t>(token.id);
  if (slot >= id_to_token_.size()) {
    id_to_token_.resize(slot + 1);
    id_kind_.resize(slot + 1, TokenKind::None);
  }
  id_to_token_[slot] = token.content;
  id_kind_[slot] = token.special ? TokenKind::Special : TokenKind::Added;
  added_ids_[token.content] = token.id;
  added_tokens_.push_back(std::move(token));
}

void BpeTokenizer::parse_normalizer(const json& normalizer) {
  if (normalizer.is_null()) return;
  const std::string type = require(normalizer, "type", file_ + ": normalizer").get<std::string>();
  if (type == "Sequence") {
    for (const json& step : require(normalizer, "normalizers", file_ + ": normalizer")) {
      parse_normalizer(step);
    }
  } else if (type == "NFC") {
    normalizers_.push_back(Normalization::NFC);
  } else if (type == "NFD") {
    normalizers_.push_back(Normalization::NFD);
  } else if (type == "NFKC") {
    normalizers_.push_back(Normalization::NFKC);
  } else if (type == "NFKD") {
    normalizers_.push_back(Normalization::NFKD);
  } else {
    fail("{}: unsupported normalizer type '{}'", file_, type);
  }
}

void BpeTokenizer::parse_pre_tokenizer(const json& pre_tokenizer) {
  const std::string where = file_ + ": pre_tokenizer";
  if (pre_tokenizer.is_null()) {
    fail("{}: none given; byte-level BPE needs a ByteLevel pre-tokenizer", where);
  }
  const std::string type = require(pre_tokenizer, "type", where).get<std::string>();
  if (type == "Sequence") {
    for (const json& step : require(pre_tokenizer, "pretokenizers", where)) parse_pre_tokenizer(step);
  } else if (type == "Split") {
    const json& pattern = require(pre_tokenizer, "pattern", where + " Split");
    std::string regex;
    if (pattern.contains("Regex")) {
      regex = pattern["Regex"].get<std::string>();
    } else if (pattern.contains("String")) {
      regex = escape_regex_literal(pattern["String"].get<std::string>());
    } else {
      fail("{} Split: pattern is neither Regex nor String", where);
    }
    const std::string behavior = pre_tokenizer.value("behavior", "");
    if (behavior != "Isolated") {
      fail("{} Split: unsupported behavior '{}' (only Isolated is supported)", where, behavior);
    }
    if (flag(pre_tokenizer, "invert", false)) fail("{} Split: invert=true is not supported", where);
    pre_tokenizers_.push_back(std::make_unique<RegexSplitStep>(regex, where + " Split"));
  } else if (type == "Digits") {
    const bool individual = flag(pre_tokenizer, "individual_digits", false);
    pre_tokenizers_.push_back(
        std::make_unique<RegexSplitStep>(individual ? R"(\p{N})" : R"(\p{N}+)", where + " Digits"));
  } else if (type == "ByteLevel") {
    pre_tokenizers_.push_back(std::make_unique<ByteLevelStep>(
        flag(pre_tokenizer, "add_prefix_space", true), flag(pre_tokenizer, "use_regex", true),
        where + " ByteLevel"));
    has_byte_level_ = true;
  } else {
    fail("{}: unsupported pre-tokenizer type '{}'", where, type);
  }
}

// ---- Encoding -----------------------------------------------------------------------------------

std::string BpeTokenizer::normalize(std::string_view text) const {
  if (normalizers_.empty() || is_ascii(text)) return std::string(text);
  std::string current(text);
  for (const Normalization form : normalizers_) {
    int options = UTF8PROC_STABLE;
    switch (form) {
      case Normalization::NFC: options |= UTF8PROC_COMPOSE; break;
      case Normalization::NFD: options |= UTF8PROC_DECOMPOSE; break;
      case Normalization::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
      case Normalization::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    utf8proc_uint8_t* mapped = nullptr;
    const utf8proc_ssize_t length =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(current.data()),
                     static_cast<utf8proc_ssize_t>(current.size()), &mapped,
                     static_cast<utf8proc_option_t>(options));
    if (length < 0) fail("{}: normalizer failed: {}", file_, utf8proc_errmsg(length));
    current.assign(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length));
    std::free(mapped);
  }
  return current;
}

// Splits every plain piece at the added tokens of trie, leftmost-longest like `tokenizers`' Aho-
// Corasick pass. A special token with !parse_special stays plain text, and the scan resumes after it.
void BpeTokenizer::split_added(std::vector<Piece>& pieces, const AddedTokenTrie& trie,
                               bool parse_special) const {
  if (trie.nodes.size() == 1) return;
  std::vector<Piece> out;
  for (Piece& piece : pieces) {
    if (piece.added_token >= 0) {
      out.push_back(std::move(piece));
      continue;
    }
    const std::string_view text = piece.text;
    size_t plain_start = 0, pos = 0;
    while (pos < text.size()) {
      int node = 0, token = -1;
      size_t end = pos;
      for (size_t k = pos; k < text.size(); ++k) {
        const auto& children = trie.nodes[node].children;
        const auto it = children.find(static_cast<unsigned char>(text[k]));
        if (it == children.end()) break;
        node = it->second;
        if (trie.nodes[node].token >= 0) token = trie.nodes[node].token, end = k + 1;
      }
      if (token < 0) {
        ++pos;
        continue;
      }
      const AddedToken& added = added_tokens_[static_cast<size_t>(token)];
      if (added.special && !parse_special) {
        pos = end;
        continue;
      }
      size_t start = pos;
      if (added.lstrip) {
        while (start > plain_start) {
          size_t back = start - 1;
          while (back > plain_start && (static_cast<unsigned char>(text[back]) & 0xC0) == 0x80) --back;
          size_t probe = back;
          if (!is_white_space(decode_code_point(text, probe))) break;
          start = back;
        }
      }
      if (added.rstrip) {
        while (end < text.size()) {
          size_t probe = end;
          if (!is_white_space(decode_code_point(text, probe))) break;
          end = probe;
        }
      }
      if (start > plain_start) out.push_back({std::string(text.substr(plain_start, start - plain_start))});
      out.push_back({added.content, token});
      plain_start = pos = end;
    }
    if (plain_start < text.size()) out.push_back({std::string(text.substr(plain_start))});
  }
  pieces = std::move(out);
}

std::vector<BpeTokenizer::Piece> BpeTokenizer::split_and_normalize(std::string_view text, bool parse_special) const {
  if (const auto bad = first_invalid_utf8(text)) {
    fail("tokenizer encode: input is not valid UTF-8 at byte {}", *bad);
  }
  std::vector<Piece> pieces{{std::string(text)}};
  split_added(pieces, raw_added_trie_, parse_special);
  for (Piece& piece : pieces) {
    if (piece.added_token < 0) piece.text = normalize(piece.text);
  }
  split_added(pieces, normalized_added_trie_, parse_special);
  return pieces;
}

// Byte-level pre-tokenization keeps every byte and a complete alphabet maps each to a token, so a text
// piece of n bytes takes at least n / max_token_bytes_ tokens; an added token is one.
size_t BpeTokenizer::min_tokens(std::string_view text, bool parse_special) const {
  if (!has_byte_level_ || !byte_alphabet_complete_) return 0;
  size_t tokens = 0;
  for (const Piece& piece : split_and_normalize(text, parse_special)) {
    tokens += piece.added_token >= 0 ? 1 : (piece.text.size() + max_token_bytes_ - 1) / max_token_bytes_;
  }
  return tokens;
}

std::vector<int> BpeTokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int> ids;
  std::vector<std::string> words, next;
  for (const Piece& piece : split_and_normalize(text, parse_special)) {
    if (piece.added_token >= 0) {
      ids.push_back(added_tokens_[static_cast<size_t>(piece.added_token)].id);
      continue;
    }
    if (piece.text.empty()) continue;
    words.assign(1, piece.text);
    for (const auto& step : pre_tokenizers_) {
      next.clear();
      for (const std::string& word : words) step->apply(word, next);
      words.swap(next);
    }
    for (const std::string& word : words) {
      if (!word.empty()) encode_word(word, ids);
    }
  }
  return ids;
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int>& out) const {
  if (ignore_merges_) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  {
    std::lock_guard lock(cache_mutex_);
    if (const auto it = word_cache_.find(word); it != word_cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int> ids;
  merge_word(word, ids);
  out.insert(out.end(), ids.begin(), ids.end());
  constexpr size_t kMaxCachedWords = 1 << 16;
  std::lock_guard lock(cache_mutex_);
  if (word_cache_.size() >= kMaxCachedWords) word_cache_.clear();
  word_cache_.emplace(std::string(word), std::move(ids));
}

// BPE on one word (byte-level characters): start from one symbol per character and repeatedly merge
// the adjacent pair of lowest merge rank, leftmost first, through a heap with lazy invalidation:
// O(n log n) per word instead of rescanning all pairs after every merge.
void BpeTokenizer::merge_word(std::string_view word, std::vector<int>& out) const {
  struct Symbol {
    int id;
    int prev, next;  // neighbours in the linked list; -1 at the ends
  };
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < word.size();) {
    const size_t start = pos;
    decode_code_point(word, pos);
    const auto it = vocab_.find(word.substr(start, pos - start));
    if (it != vocab_.end()) {
      symbols.push_back({it->second, -1, -1});
    } else if (unk_id_) {
      symbols.push_back({*unk_id_, -1, -1});
    }
  }
  const int count = static_cast<int>(symbols.size());
  for (int i = 0; i < count; ++i) symbols[i].prev = i - 1, symbols[i].next = i + 1 < count ? i + 1 : -1;

  struct Candidate {
    int rank, left, left_id, right_id;
    bool operator>(const Candidate& other) const {
      return rank != other.rank ? rank > other.rank : left > other.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int left) {
    if (left < 0 || symbols[left].next < 0) return;
    const int right = symbols[left].next;
    const uint64_t key = (static_cast<uint64_t>(symbols[left].id) << 32) |
                         static_cast<uint32_t>(symbols[right].id);
    if (const auto it = merges_.find(key); it != merges_.end()) {
      queue.push({it->second.first, left, symbols[left].id, symbols[right].id});
    }
  };
  for (int i = 0; i + 1 < count; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.left];
    // Stale when either side has merged since (a removed symbol has id -1).
    if (left.id != top.left_id || left.next < 0 || symbols[left.next].id != top.right_id) continue;
    const int right = left.next;
    const uint64_t key = (static_cast<uint64_t>(top.left_id) << 32) | static_cast<uint32_t>(top.right_id);
    left.id = merges_.at(key).second;
    left.next = symbols[right].next;
    if (left.next >= 0) symbols[left.next].prev = top.left;
    symbols[right].id = -1;
    consider(left.prev);
    consider(top.left);
  }
  // A merge keeps its left symbol, so symbol 0 always heads the list.
  for (int i = count > 0 ? 0 : -1; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

// ---- Decoding -----------------------------------------------------------------------------------

std::optional<int> BpeTokenizer::token_id(std::string_view token) const {
  if (const auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (const auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return std::nullopt;
}

std::string_view BpeTokenizer::token_text(int id) const {
  if (id < 0 || id >= vocab_size() || id_kind_[static_cast<size_t>(id)] == TokenKind::None) {
    fail("{}: no token has id {} (vocab size {})", file_, id, vocab_size());
  }
  return id_to_token_[static_cast<size_t>(id)];
}

bool BpeTokenizer::is_special(int id) const {
  return id >= 0 && id < vocab_size() && id_kind_[static_cast<size_t>(id)] == TokenKind::Special;
}

std::string_view BpeTokenizer::token_bytes(int id, bool skip_special) const {
  if (id < 0 || id >= vocab_size()) return {};
  const TokenKind kind = id_kind_[static_cast<size_t>(id)];
  if (kind == TokenKind::None || (skip_special && kind == TokenKind::Special)) return {};
  return id_to_bytes_[static_cast<size_t>(id)];
}

std::string BpeTokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  std::string bytes;
  for (const int id : ids) bytes += token_bytes(id, skip_special);
  std::string out;
  append_utf8_lossy(bytes, true, out);
  return out;
}

std::string StreamDecoder::push(int id) {
  pending_ += tokenizer_.token_bytes(id, skip_special_);
  std::string out;
  pending_.erase(0, append_utf8_lossy(pending_, false, out));
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  append_utf8_lossy(pending_, true, out);
  pending_.clear();
  return out;
}

}  // namespace uberlm
