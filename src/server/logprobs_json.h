#pragma once
// Generated tokens' logprobs in OpenAI's two shapes: a completion choice's
//   {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{text: logprob}], "text_offset": [...]}
// and a chat choice's {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}.
#include <cstddef>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/sampler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

// text_offset: where each token's text begins in the concatenation of the tokens' texts (the reply's text
// whenever no token ends inside a UTF-8 sequence), counting on from `offset`, which it advances.
nlohmann::json completion_logprobs_json(const std::vector<TokenLogprobs>& tokens, const BpeTokenizer& tokenizer,
                                        size_t& offset);
nlohmann::json chat_logprobs_json(const std::vector<TokenLogprobs>& tokens, const BpeTokenizer& tokenizer);

}  // namespace uberlm
