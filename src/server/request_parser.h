#pragma once
// OpenAI request bodies -> plain structs, with every field checked. A bad request throws ApiError
// carrying the HTTP status and an OpenAI-style message naming the field; so does every field this
// server does not implement, so that no parameter is silently ignored. No tokenizer or engine here:
// this is what the fuzz target exercises.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/error.h"
#include "tokenizer/python_format.h"

namespace uberlm {

class ApiError : public Error {
 public:
  ApiError(int status, std::string type, const std::string& message, std::string param = "")
      : Error(message), status(status), type(std::move(type)), param(std::move(param)) {}
  int status;
  std::string type;   // invalid_request_error, authentication_error, ...
  std::string param;  // the field at fault, or empty
};

[[noreturn]] void bad_request(const std::string& param, const std::string& message);

struct GenerationOptions {
  std::optional<int64_t> max_tokens;  // absent: the endpoint's default
  float temperature = 1.0f;
  float top_p = 1.0f;
  int top_k = 0;  // 0: off (-1 is accepted as off too, as in vLLM)
  float min_p = 0.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  std::vector<std::pair<int32_t, float>> logit_bias;  // ids checked against the vocabulary by the engine
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  int top_logprobs = -1;       // >= 0: return each token's logprob and this many alternatives
};

struct CompletionRequest {
  std::string model;
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;  // when the prompt is given as token ids
  bool echo = false;                // the reply's text begins with the prompt's
  GenerationOptions options;
};

enum class ToolChoice {
  Auto,  // the model may call the request's tools
  None,  // it may not: tools are neither rendered nor parsed
};

struct ChatCompletionRequest {
  std::string model;
  // What the chat template reads (tokenizer/chat_template.h): messages with string content ("" for none)
  // and tool_calls whose function.arguments are objects (clients send them as JSON text); tools as sent.
  JsonValue messages = JsonValue::array();
  JsonValue tools;  // null or a non-empty array of {"type": "function", "function": {"name", ...}}
  ToolChoice tool_choice = ToolChoice::Auto;
  bool parallel_tool_calls = true;  // false: at most one tool call is returned
  bool add_generation_prompt = true;
  JsonValue chat_template_kwargs = JsonValue::object();
  GenerationOptions options;
};

// served_model: the only accepted `model` (404 otherwise); max_model_len bounds max_tokens.
CompletionRequest parse_completion_request(std::string_view body, const std::string& served_model,
                                           int64_t max_model_len);
ChatCompletionRequest parse_chat_completion_request(std::string_view body, const std::string& served_model,
                                                    int64_t max_model_len);

}  // namespace uberlm
