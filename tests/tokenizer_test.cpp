// Byte-level BPE against the `tokenizers` package (fixtures from tests/oracle/fixtures_tokenizer.py):
// identical ids and decoded text on every GSM8K test question and a set of tricky strings, for a
// Qwen3.5-pipeline tokenizer and two GPT-2-style ones.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"
#include "expect_error.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

struct OracleCase {
  std::string text;
  bool parse_special;
  std::vector<int> ids;
  std::string decoded;
};

fs::path fixture_dir(const std::string& variant) {
  return fs::path(UBERLM_FIXTURE_DIR) / "tokenizer" / variant;
}

std::vector<OracleCase> read_cases(const std::string& variant) {
  const fs::path path = fixture_dir(variant) / "cases.jsonl";
  std::ifstream stream(path);
  EXPECT_TRUE(stream) << "missing fixture " << path << " (run tests/oracle/make_fixtures.py)";
  std::vector<OracleCase> cases;
  for (std::string line; std::getline(stream, line);) {
    const auto row = nlohmann::json::parse(line);
    cases.push_back({row.at("text"), row.at("parse_special"), row.at("ids"), row.at("decoded")});
  }
  return cases;
}

std::unique_ptr<BpeTokenizer> load_fixture(const std::string& variant) {
  return BpeTokenizer::load(fixture_dir(variant) / "tokenizer.json");
}

// Strict UTF-8 check (no overlongs, surrogates or code points past U+10FFFF).
bool is_valid_utf8(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    const auto lead = static_cast<unsigned char>(text[pos]);
    size_t length = 0;
    char32_t code_point = 0;
    if (lead < 0x80) {
      length = 1, code_point = lead;
    } else if ((lead & 0xE0) == 0xC0) {
      length = 2, code_point = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, code_point = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, code_point = lead & 0x07;
    } else {
      return false;
    }
    if (pos + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      const auto byte = static_cast<unsigned char>(text[pos + k]);
      if ((byte & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (byte & 0x3F);
    }
    constexpr char32_t kMinimum[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (code_point < kMinimum[length] || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF)) {
      return false;
    }
    pos += length;
  }
  return true;
}

std::string ids_text(const std::vector<int>& ids) { return fmt::format("[{}]", fmt::join(ids, ", ")); }

class TokenizerOracle : public testing::TestWithParam<std::string> {};

TEST_P(TokenizerOracle, IdsAndDecodedTextMatchTokenizersPackage) {
  const auto tokenizer = load_fixture(GetParam());
  const auto cases = read_cases(GetParam());
  ASSERT_GT(cases.size(), 1319u) << "expected every GSM8K test question plus the tricky strings";
  int id_mismatches = 0, text_mismatches = 0;
  for (const OracleCase& c : cases) {
    const std::vector<int> ids = tokenizer->encode(c.text, c.parse_special);
    if (ids != c.ids && ++id_mismatches <= 5) {
      ADD_FAILURE() << "text " << nlohmann::json(c.text).dump() << " parse_special=" << c.parse_special
                    << "\n ours " << ids_text(ids) << "\n want " << ids_text(c.ids);
    }
    const std::string decoded = tokenizer->decode(c.ids);
    if (decoded != c.decoded && ++text_mismatches <= 5) {
      ADD_FAILURE() << "decode " << ids_text(c.ids) << "\n ours " << nlohmann::json(decoded).dump()
                    << "\n want " << nlohmann::json(c.decoded).dump();
    }
  }
  EXPECT_EQ(id_mismatches, 0) << "of " << cases.size() << " cases";
  EXPECT_EQ(text_mismatches, 0) << "of " << cases.size() << " cases";
}

TEST_P(TokenizerOracle, StreamDecoderChunksAreValidUtf8AndConcatenateToDecode) {
  const auto tokenizer = load_fixture(GetParam());
  const auto cases = read_cases(GetParam());
  ASSERT_FALSE(cases.empty());
  int held_back = 0;  // chunks that ended mid-character would have been invalid without holding back
  for (const OracleCase& c : cases) {
    StreamDecoder stream(*tokenizer);
    std::string streamed;
    for (const int id : c.ids) {
      const std::string chunk = stream.push(id);
      ASSERT_TRUE(is_valid_utf8(chunk)) << "chunk after id " << id << " of " << ids_text(c.ids);
      held_back += !is_valid_utf8(tokenizer->token_bytes(id));
      streamed += chunk;
    }
    const std::string tail = stream.flush();
    ASSERT_TRUE(is_valid_utf8(tail));
    streamed += tail;
    ASSERT_EQ(streamed, c.decoded) << ids_text(c.ids);
  }
  EXPECT_GT(held_back, 0) << "no case split a character across tokens; the test proves nothing";
}

INSTANTIATE_TEST_SUITE_P(Tokenizer, TokenizerOracle,
                         testing::Values("qwen", "gpt2", "gpt2_prefix_space"));

int byte_token(const BpeTokenizer& tokenizer, unsigned char byte) {
  for (int id = 0; id < tokenizer.vocab_size(); ++id) {
    if (tokenizer.token_bytes(id) == std::string(1, static_cast<char>(byte))) return id;
  }
  ADD_FAILURE() << "no single-byte token for " << static_cast<int>(byte);
  return -1;
}

TEST(TokenizerStream, InvalidAndTruncatedSequencesBecomeReplacementCharacters) {
  const auto tokenizer = load_fixture("qwen");
  // "€" is E2 82 AC: push E2 82 then 'A' (the sequence breaks), then a lone E2 left at the end.
  const std::vector<int> ids = {byte_token(*tokenizer, 0xE2), byte_token(*tokenizer, 0x82),
                                byte_token(*tokenizer, 'A'), byte_token(*tokenizer, 0xE2),
                                byte_token(*tokenizer, 0x82), byte_token(*tokenizer, 0xAC),
                                byte_token(*tokenizer, 0xFF), byte_token(*tokenizer, 0xE2)};
  StreamDecoder stream(*tokenizer);
  std::vector<std::string> chunks;
  for (const int id : ids) chunks.push_back(stream.push(id));
  chunks.push_back(stream.flush());
  const std::vector<std::string> expected = {"", "", "\uFFFDA", "", "", "€", "\uFFFD", "", "\uFFFD"};
  EXPECT_EQ(chunks, expected);
  EXPECT_EQ(tokenizer->decode(ids), "\uFFFDA€\uFFFD\uFFFD");
}

TEST(TokenizerVocab, SpecialTokensLookupAndSkip) {
  const auto tokenizer = load_fixture("qwen");
  EXPECT_EQ(tokenizer->vocab_size(), 4099);
  EXPECT_EQ(tokenizer->token_id("<|endoftext|>"), 0);
  EXPECT_EQ(tokenizer->token_id("<|im_start|>"), 1);
  EXPECT_EQ(tokenizer->token_id("<|im_end|>"), 2);
  EXPECT_EQ(tokenizer->token_id("<think>"), 4096);
  EXPECT_FALSE(tokenizer->token_id("<|not_a_token|>").has_value());
  EXPECT_EQ(tokenizer->token_text(2), "<|im_end|>");
  EXPECT_TRUE(tokenizer->is_special(2));
  EXPECT_FALSE(tokenizer->is_special(4096));
  EXPECT_THROW(tokenizer->token_text(-1), Error);
  EXPECT_THROW(tokenizer->token_text(tokenizer->vocab_size()), Error);

  const std::vector<int> ids = tokenizer->encode("<|im_start|>user\nhi<think><|im_end|>");
  EXPECT_EQ(tokenizer->decode(ids, /*skip_special=*/true), "user\nhi<think>");
  EXPECT_THROW(tokenizer->encode("bad \xC3\x28 utf8"), Error);
}

TEST(TokenizerChat, EncodesChatMlMarkersAsSpecialTokens) {
  ChatTemplateInputs inputs;
  inputs.messages = JsonValue::parse(R"([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is 2+2?"},
                                          {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}])");
  const std::string prompt = ChatTemplate::chatml().render(inputs);
  const auto tokenizer = load_fixture("qwen");
  const std::vector<int> ids = tokenizer->encode(prompt);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 1), 5);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 4);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(tokenizer->decode(ids), prompt);
}

TEST(TokenizerSpeed, EncodesAllGsm8kTestQuestionsWellUnderASecond) {
  const auto tokenizer = load_fixture("qwen");
  std::vector<std::string> questions;
  for (const OracleCase& c : read_cases("qwen")) questions.push_back(c.text);
  questions.resize(1319);  // the GSM8K test questions come first
  const auto start = std::chrono::steady_clock::now();
  size_t tokens = 0;
  for (const std::string& question : questions) tokens += tokenizer->encode(question).size();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("encoded %zu questions, %zu tokens in %.3f s\n", questions.size(), tokens, seconds);
  EXPECT_LT(seconds, 0.5);
}

class TokenizerBadFile : public testing::Test {
 protected:
  fs::path write(const std::string& name, const std::string& content) {
    const fs::path dir = fs::path(testing::TempDir()) / "uberlm_tokenizer_bad";
    fs::create_directories(dir);
    const fs::path path = dir / name;
    std::ofstream(path) << content;
    return path;
  }
  // Loading must throw an Error naming the file and containing the given words.
  void expect_error(const fs::path& path, std::vector<std::string> words) {
    words.push_back(path.string());
    expect_error_containing([&] { BpeTokenizer::load(path); }, words);
  }
  nlohmann::json valid() {
    std::ifstream stream(fixture_dir("qwen") / "tokenizer.json");
    return nlohmann::json::parse(stream);
  }
};

TEST_F(TokenizerBadFile, ErrorsNameTheFileAndTheComponent) {
  expect_error(fs::path(testing::TempDir()) / "uberlm_tokenizer_bad" / "absent.json", {"cannot open"});
  expect_error(write("not_json.json", "{\"model\": {\"type\": \"BPE\", "), {"not valid JSON"});

  nlohmann::json config = valid();
  config["model"]["type"] = "WordPiece";
  expect_error(write("wordpiece.json", config.dump()), {"model", "WordPiece"});

  config = valid();
  config["model"].erase("merges");
  expect_error(write("no_merges.json", config.dump()), {"merges"});

  config = valid();
  config["model"]["merges"][7] = nlohmann::json::array({"Ġ", "not-in-vocab"});
  expect_error(write("bad_merge.json", config.dump()), {"merge 7"});

  config = valid();
  config["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "MergedWithNext";
  expect_error(write("split_behavior.json", config.dump()), {"pre_tokenizer", "MergedWithNext"});

  config = valid();
  config["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_error(write("whitespace.json", config.dump()), {"pre_tokenizer", "Whitespace"});

  config = valid();
  config["pre_tokenizer"] = config["pre_tokenizer"]["pretokenizers"][0];
  expect_error(write("no_byte_level.json", config.dump()), {"ByteLevel"});

  config = valid();
  config["normalizer"] = {{"type", "Lowercase"}};
  expect_error(write("lowercase.json", config.dump()), {"normalizer", "Lowercase"});

  config = valid();
  config["decoder"] = {{"type", "Metaspace"}};
  expect_error(write("metaspace.json", config.dump()), {"decoder", "Metaspace"});

  config = valid();
  config["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_error(write("bad_regex.json", config.dump()), {"regex", "(unclosed"});
}

// Ids are read unsigned and bounded: 2^31 + 5 is reported as written (it once wrapped to a negative id),
// and an id that would make the id -> token table huge is refused.
TEST_F(TokenizerBadFile, TokenIdsAreReportedAsWrittenAndBounded) {
  nlohmann::json config = valid();
  config["added_tokens"][0]["id"] = 2147483653ULL;
  expect_error(write("added_id_past_2_31.json", config.dump()), {"added_tokens", "has id 2147483653, above the largest"});
  config = valid();
  config["added_tokens"][0]["id"] = -3;
  expect_error(write("added_id_negative.json", config.dump()), {"added_tokens", "negative id -3"});
  config = valid();
  config["model"]["vocab"]["a"] = 1 << 22;
  expect_error(write("vocab_id_huge.json", config.dump()), {"model", "has id 4194304, above the largest"});
  config = valid();
  config["model"]["vocab"]["a"] = "7";
  expect_error(write("vocab_id_string.json", config.dump()), {"model", "not an integer"});
}

}  // namespace
}  // namespace uberlm

namespace uberlm {
namespace {

// The bound a server checks prompts against before tokenising them never exceeds the real count.
TEST(TokenizerMinTokens, IsALowerBoundOnTheEncodedLength) {
  const auto tokenizer = BpeTokenizer::load(std::filesystem::path(UBERLM_SOURCE_DIR) / "models/default/tokenizer.json");
  const std::string long_word(100'000, 'a');
  for (const std::string text : {std::string("Hello, world!"), std::string("<|im_start|>user\nhi<|im_end|>"),
                                 std::string("caf\xc3\xa9 \xe2\x82\xac 12345 \n\n  tabs\t"), long_word}) {
    SCOPED_TRACE(text.substr(0, 40));
    const size_t bound = tokenizer->min_tokens(text);
    EXPECT_GT(bound, 0u);
    EXPECT_LE(bound, tokenizer->encode(text).size());
  }
  EXPECT_GT(tokenizer->min_tokens(long_word), 1000u);
}

}  // namespace
}  // namespace uberlm
