#pragma once
// Where `eval gsm8k` gets its greedy completions: an OpenAI-compatible server (ours or any other)
// through /v1/completions, or an engine in this process.
#include <string>
#include <vector>

#include "eval/gsm8k.h"
#include "runtime/engine.h"
#include "tokenizer/bpe_tokenizer.h"

namespace uberlm {

// The first model id of GET <url>/v1/models; errors name the URL.
std::string served_model_id(const std::string& url, const std::string& api_key);

// POST <url>/v1/completions with temperature 0; api_key empty: no Authorization header.
CompletionSource openai_completion_source(const std::string& url, const std::string& model_id,
                                          const std::string& api_key);

// Requests submitted to a running engine (EngineConfig::loop_thread), ended by `stop_token_ids`.
// The engine and tokenizer must outlive the source.
CompletionSource engine_completion_source(Engine& engine, const BpeTokenizer& tokenizer,
                                          std::vector<int> stop_token_ids);

}  // namespace uberlm
