#include "server/logprobs_json.h"

#include <string>

namespace uberlm {

using json = nlohmann::json;

namespace {

// A token's text: its bytes, which may be part of a UTF-8 sequence (written out lossily, as OpenAI does).
std::string token_text(const BpeTokenizer& tokenizer, int32_t id) { return tokenizer.decode({id}); }

json token_bytes_json(const BpeTokenizer& tokenizer, int32_t id) {
  json bytes = json::array();
  for (const char byte : tokenizer.token_bytes(id)) bytes.push_back(static_cast<unsigned char>(byte));
  return bytes;
}

json chat_entry(const BpeTokenizer& tokenizer, int32_t id, double logprob) {
  return {{"token", token_text(tokenizer, id)}, {"logprob", logprob}, {"bytes", token_bytes_json(tokenizer, id)}};
}

}  // namespace

json completion_logprobs_json(const std::vector<TokenLogprobs>& tokens, const BpeTokenizer& tokenizer, size_t& offset) {
  json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const TokenLogprobs& token : tokens) {
    const std::string text = token_text(tokenizer, token.token);
    out["tokens"].push_back(text);
    out["token_logprobs"].push_back(token.logprob);
    json top = json::object();
    for (const auto& [id, logprob] : token.top) top[token_text(tokenizer, id)] = logprob;
    out["top_logprobs"].push_back(top);
    out["text_offset"].push_back(offset);
    offset += text.size();
  }
  return out;
}

json chat_logprobs_json(const std::vector<TokenLogprobs>& tokens, const BpeTokenizer& tokenizer) {
  json content = json::array();
  for (const TokenLogprobs& token : tokens) {
    json entry = chat_entry(tokenizer, token.token, token.logprob);
    entry["top_logprobs"] = json::array();
    for (const auto& [id, logprob] : token.top) entry["top_logprobs"].push_back(chat_entry(tokenizer, id, logprob));
    content.push_back(entry);
  }
  return {{"content", content}};
}

}  // namespace uberlm
