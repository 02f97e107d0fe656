#include "server/openai_server.h"

#include <chrono>
#include <ctime>
#include <random>

#include <nlohmann/json.hpp>

#include "server/api_key.h"
#include "server/chat_output_parser.h"
#include "server/logprobs_json.h"
#include "server/request_parser.h"

namespace uberlm {

using json = nlohmann::json;

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(20);
constexpr int64_t kDefaultCompletionTokens = 16;  // OpenAI's default for /v1/completions

// The OpenAI parameter behind an EngineRequest field the engine refused.
std::string request_parameter(const std::string& field, bool chat) {
  if (field == "prompt") return chat ? "messages" : "prompt";
  if (field == "stop_strings") return "stop";
  if (field == "sampling") return "";  // the parser has range-checked each sampling parameter already
  return field;
}

std::string json_text(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(HttpReply& reply, int status, std::string_view type, std::string_view message,
                std::string_view param = "") {
  reply.send(status, "application/json", error_body(status, type, message, param));
}

void send_json(HttpReply& reply, const json& body) { reply.send(200, "application/json", json_text(body)); }

// Exactly one Authorization header holding "Bearer <key>".
bool authorized(const HttpRequest& request, const std::string& key) {
  const std::vector<std::string_view> values = request.header_values("Authorization");
  return values.size() == 1 && bearer_key_matches(values.front(), key);
}

// Frees a request's sequence unless its stream finished: the client left, a write failed, or something threw.
class CancelUnlessFinished {
 public:
  CancelUnlessFinished(Engine& engine, uint64_t id) : engine_(engine), id_(id) {}
  ~CancelUnlessFinished() {
    if (!finished_) engine_.cancel(id_);
  }
  void finished() { finished_ = true; }

 private:
  Engine& engine_;
  uint64_t id_;
  bool finished_ = false;
};

json usage_json(const StreamEvent& final) {
  return {{"prompt_tokens", final.prompt_tokens},
          {"completion_tokens", final.completion_tokens},
          {"total_tokens", final.prompt_tokens + final.completion_tokens}};
}

// How to read a chat reply: what its template and its request ask of the output parser.
struct ChatFormat {
  ChatOutputOptions output;
  bool reasoning_field = false;  // the reply carries reasoning_content: the template writes <think> blocks
  bool parallel_tool_calls = true;
};

// What a handler needs to relay an accepted request's events.
struct Reply {
  bool chat = false;
  bool include_usage = false;
  std::string echo;  // completions with echo: the prompt's text, sent before the generated text
  bool logprobs = false;  // choices carry each generated token's logprobs
  std::string id;
  std::string model;
  int64_t created = 0;
  std::string call_id_prefix;  // tool call i of this reply is call_id_prefix + i
  ChatFormat format;
};

json chunk_json(const Reply& reply, const json& choice) {
  return {{"id", reply.id},
          {"object", reply.chat ? "chat.completion.chunk" : "text_completion"},
          {"created", reply.created},
          {"model", reply.model},
          {"choices", json::array({choice})}};
}

json choice_json(const Reply& reply, const std::string& text, const json& finish_reason, bool first,
                 const json& logprobs = nullptr) {
  if (!reply.chat) return {{"index", 0}, {"text", text}, {"logprobs", logprobs}, {"finish_reason", finish_reason}};
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!text.empty() || first) delta["content"] = text;
  return {{"index", 0}, {"delta", delta}, {"logprobs", logprobs}, {"finish_reason", finish_reason}};
}

// A choice's "logprobs" for `tokens` (null unless the request asked); text_offset counts on from `offset`.
json choice_logprobs(const Reply& reply, const BpeTokenizer& tokenizer, const std::vector<TokenLogprobs>& tokens,
                     size_t& offset) {
  if (!reply.logprobs) return nullptr;
  return reply.chat ? chat_logprobs_json(tokens, tokenizer) : completion_logprobs_json(tokens, tokenizer, offset);
}

json delta_choice(json delta) {
  return {{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
}

json tool_call_json(const Reply& reply, const ParsedToolCall& call, size_t index) {
  return {{"id", reply.call_id_prefix + std::to_string(index)},
          {"type", "function"},
          {"function", {{"name", call.name}, {"arguments", call.arguments}}}};
}

// The prompt of a chat request, rendered with the model's template, and how to read the reply.
// Throws ApiError: tools for a template that ignores them, or a conversation the template rejects.
std::string render_chat(const ChatTemplate& chat_template, const ChatCompletionRequest& request, ChatFormat& format) {
  ChatTemplateInputs inputs;
  inputs.messages = request.messages;
  for (size_t i = 0; i < request.messages.size(); ++i) {
    if (request.messages[i].contains("tool_calls") && !chat_template.renders_tool_calls()) {
      bad_request(fmt::format("messages[{}].tool_calls", i),
                  fmt::format("this model's chat template ({}) does not render tool calls", chat_template.origin()));
    }
  }
  if (request.tools.is_array() && request.tool_choice == ToolChoice::Auto) {
    if (!chat_template.renders_tools()) {
      bad_request("tools", fmt::format("this model's chat template ({}) does not render tools", chat_template.origin()));
    }
    inputs.tools = request.tools;
  }
  inputs.add_generation_prompt = request.add_generation_prompt;
  inputs.kwargs = request.chat_template_kwargs;
  std::string prompt;
  try {
    prompt = chat_template.render(inputs);
  } catch (const TemplateError& error) {
    bad_request("messages", error.what());
  }
  format.reasoning_field = chat_template.writes_reasoning();
  format.output.reasoning = format.reasoning_field;
  format.output.starts_in_reasoning = format.reasoning_field && prompt_opens_reasoning(prompt);
  format.output.tools = inputs.tools;
  format.parallel_tool_calls = request.parallel_tool_calls;
  return prompt;
}

void append(ChatOutputDelta& into, ChatOutputDelta&& more) {
  into.reasoning += more.reasoning;
  into.content += more.content;
  for (ParsedToolCall& call : more.tool_calls) into.tool_calls.push_back(std::move(call));
}

// OpenAI's finish_reason: "tool_calls" when the model stopped after calling tools.
std::string chat_finish_reason(FinishReason reason, size_t tool_calls) {
  return tool_calls > 0 && reason == FinishReason::Stop ? "tool_calls" : finish_reason_name(reason);
}

json chat_message_json(const Reply& reply, ChatOutputDelta output) {
  if (!reply.format.parallel_tool_calls && output.tool_calls.size() > 1) output.tool_calls.resize(1);
  json message = {{"role", "assistant"},
                  {"content", output.content.empty() && !output.tool_calls.empty() ? json(nullptr) : json(output.content)}};
  if (reply.format.reasoning_field) message["reasoning_content"] = output.reasoning.empty() ? json(nullptr) : json(output.reasoning);
  if (!output.tool_calls.empty()) {
    json calls = json::array();
    for (size_t i = 0; i < output.tool_calls.size(); ++i) calls.push_back(tool_call_json(reply, output.tool_calls[i], i));
    message["tool_calls"] = std::move(calls);
  }
  return message;
}

// The stream choices of one piece of a chat reply, in order: reasoning, content, then each tool call
// whole (id, name and arguments in one delta). tool_calls_sent counts the calls streamed so far.
std::vector<json> chat_delta_choices(const Reply& reply, const ChatOutputDelta& delta, size_t& tool_calls_sent) {
  std::vector<json> choices;
  if (!delta.reasoning.empty()) choices.push_back(delta_choice({{"reasoning_content", delta.reasoning}}));
  if (!delta.content.empty()) choices.push_back(delta_choice({{"content", delta.content}}));
  for (const ParsedToolCall& call : delta.tool_calls) {
    if (!reply.format.parallel_tool_calls && tool_calls_sent > 0) break;
    json streamed = tool_call_json(reply, call, tool_calls_sent);
    streamed["index"] = tool_calls_sent++;
    choices.push_back(delta_choice({{"tool_calls", json::array({std::move(streamed)})}}));
  }
  return choices;
}

std::string sse(const json& data) { return "data: " + json_text(data) + "\n\n"; }

}  // namespace

OpenAiServer::OpenAiServer(Engine& engine, const BpeTokenizer& tokenizer, const ChatTemplate& chat_template,
                           Metrics& metrics, ServerConfig config)
    : engine_(engine), tokenizer_(tokenizer), chat_template_(chat_template), metrics_(metrics), config_(std::move(config)),
      http_(config_.http) {
  add_routes();
}

OpenAiServer::~OpenAiServer() = default;

int OpenAiServer::bind() { return http_.bind(); }

void OpenAiServer::serve() { http_.serve(); }

void OpenAiServer::stop() { http_.stop(); }

void OpenAiServer::add_routes() {
  http_.set_gate([this](const HttpRequest& request, HttpReply& reply) {
    const bool protected_path = request.path.rfind("/v1/", 0) == 0 || request.path == "/metrics";
    if (config_.api_key.empty() || !protected_path || authorized(request, config_.api_key)) return;
    metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="unauthorized")");
    send_error(reply, 401, "authentication_error", "missing or wrong API key: send 'Authorization: Bearer <key>'");
  });
  http_.route("GET", "/health", RunOn::IoThread, false, [](const HttpRequest&, HttpReply& reply) {
    reply.send(200, "application/json", R"({"status":"ok"})");
  });
  http_.route("GET", "/metrics", RunOn::IoThread, false, [this](const HttpRequest&, HttpReply& reply) {
    reply.send(200, "text/plain; version=0.0.4", metrics_.render());
  });
  http_.route("GET", "/v1/models", RunOn::IoThread, false, [this](const HttpRequest&, HttpReply& reply) {
    json model = {{"id", config_.model_name},       {"object", "model"},
                  {"created", std::time(nullptr)},  {"owned_by", "uberlm"},
                  {"max_model_len", engine_.max_model_len()}};
    send_json(reply, json{{"object", "list"}, {"data", json::array({model})}});
  });
  http_.route("POST", "/v1/completions", RunOn::Worker, true,
              [this](const HttpRequest& request, HttpReply& reply) { generate(request, reply, false); });
  http_.route("POST", "/v1/chat/completions", RunOn::Worker, true,
              [this](const HttpRequest& request, HttpReply& reply) { generate(request, reply, true); });
}

// A prompt that cannot fit is refused before BPE runs over all of it: min_tokens() is one linear pass,
// while a prompt of megabytes takes seconds to tokenise.
std::vector<int32_t> OpenAiServer::prompt_tokens(std::string_view text, bool chat) const {
  const int64_t max_len = engine_.max_model_len();
  const auto least = static_cast<int64_t>(tokenizer_.min_tokens(text));
  if (least + 1 > max_len) {
    bad_request(chat ? "messages" : "prompt",
                fmt::format("the prompt is at least {} tokens; max-model-len {} leaves no room to generate", least,
                            max_len));
  }
  const std::vector<int> ids = tokenizer_.encode(text);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

void OpenAiServer::generate(const HttpRequest& http_request, HttpReply& http_reply, bool chat) {
  const int64_t max_len = engine_.max_model_len();
  EngineRequest request;
  GenerationOptions options;
  ChatFormat chat_format;
  std::string echo;
  try {
    if (chat) {
      ChatCompletionRequest parsed = parse_chat_completion_request(http_request.body, config_.model_name, max_len);
      options = parsed.options;
      request.prompt = prompt_tokens(render_chat(chat_template_, parsed, chat_format), true);
    } else {
      CompletionRequest parsed = parse_completion_request(http_request.body, config_.model_name, max_len);
      options = parsed.options;
      request.prompt = parsed.prompt_text ? prompt_tokens(*parsed.prompt_text, false) : parsed.prompt_ids;
      if (parsed.echo) echo = parsed.prompt_text ? *parsed.prompt_text : tokenizer_.decode(parsed.prompt_ids);
    }
    // OpenAI's default for /v1/completions, shortened to the room the prompt leaves; chat: the engine's
    // default, the rest of the context.
    request.max_tokens = options.max_tokens;
    const int64_t room = max_len - static_cast<int64_t>(request.prompt.size());
    if (!chat && !request.max_tokens && room > 0) request.max_tokens = std::min(kDefaultCompletionTokens, room);
    request.sampling = SamplingParams{.temperature = options.temperature,
                                      .top_k = options.top_k,
                                      .top_p = options.top_p,
                                      .seed = options.seed.value_or(std::random_device{}()),
                                      .min_p = options.min_p,
                                      .presence_penalty = options.presence_penalty,
                                      .frequency_penalty = options.frequency_penalty,
                                      .repetition_penalty = options.repetition_penalty,
                                      .logit_bias = options.logit_bias};
    request.stop_strings = options.stop;
    request.top_logprobs = options.top_logprobs;
    request.stop_token_ids = config_.stop_token_ids;
    if (chat) {
      if (auto im_end = tokenizer_.token_id("<|im_end|>")) request.stop_token_ids.push_back(*im_end);
    }
  } catch (const ApiError& error) {
    metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="invalid")");
    send_error(http_reply, error.status, error.type, error.what(), error.param);
    return;
  } catch (const Error& error) {
    metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="invalid")");
    send_error(http_reply, 400, "invalid_request_error", error.what());
    return;
  }

  std::shared_ptr<RequestStream> stream;
  try {
    stream = engine_.submit(request);
  } catch (const RequestError& error) {
    metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="invalid")");
    send_error(http_reply, 400, "invalid_request_error", error.what(), request_parameter(error.field, chat));
    return;
  }
  if (!stream) {
    metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="queue_full")");
    send_error(http_reply, 503, "server_overloaded", "the server is at capacity (too many queued requests); retry later");
    return;
  }
  CancelUnlessFinished sequence(engine_, stream->id());
  Reply reply{chat,
              options.include_usage,
              echo,
              options.top_logprobs >= 0,
              fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", stream->id()),
              config_.model_name,
              static_cast<int64_t>(std::time(nullptr)),
              fmt::format("call_{}_", stream->id()),
              chat_format};

  if (!options.stream) {
    std::string text = reply.echo;
    std::vector<TokenLogprobs> logprobs;
    StreamEvent event;
    while (true) {
      if (!stream->next(event, kPollInterval)) {
        if (http_reply.client_gone()) return;
        continue;
      }
      text += event.text;
      logprobs.insert(logprobs.end(), event.logprobs.begin(), event.logprobs.end());
      if (event.finished) break;
    }
    sequence.finished();
    if (!event.error.empty()) {
      send_error(http_reply, 500, "server_error", event.error);
      return;
    }
    size_t text_offset = 0;
    const json logprobs_json = choice_logprobs(reply, tokenizer_, logprobs, text_offset);
    json choice;
    if (chat) {
      ChatOutputParser parser(reply.format.output);
      ChatOutputDelta output = parser.feed(text);
      append(output, parser.finish());
      const std::string finish = chat_finish_reason(event.finish_reason, output.tool_calls.size());
      choice = {{"index", 0}, {"message", chat_message_json(reply, std::move(output))}, {"logprobs", logprobs_json},
                {"finish_reason", finish}};
    } else {
      choice = {{"index", 0}, {"text", text}, {"logprobs", logprobs_json},
                {"finish_reason", finish_reason_name(event.finish_reason)}};
    }
    send_json(http_reply, {{"id", reply.id},
                           {"object", chat ? "chat.completion" : "text_completion"},
                           {"created", reply.created},
                           {"model", reply.model},
                           {"choices", json::array({choice})},
                           {"usage", usage_json(event)}});
    return;
  }

  http_reply.set_header("Cache-Control", "no-cache");
  const auto write = [&](const json& data) { return http_reply.write(sse(data)); };
  if (!http_reply.start_stream("text/event-stream")) return;
  if (reply.chat && !write(chunk_json(reply, choice_json(reply, "", nullptr, true)))) return;
  if (!reply.echo.empty() && !write(chunk_json(reply, choice_json(reply, reply.echo, nullptr, false)))) return;
  std::unique_ptr<ChatOutputParser> parser;
  if (chat) parser = std::make_unique<ChatOutputParser>(reply.format.output);
  size_t tool_calls_sent = 0;
  size_t text_offset = 0;  // of the next token, for completions' logprobs
  StreamEvent event;
  while (true) {
    if (!stream->next(event, kPollInterval)) {
      if (http_reply.client_gone()) return;
      continue;
    }
    if (reply.chat) {
      ChatOutputDelta delta = parser->feed(event.text);
      if (event.finished) append(delta, parser->finish());
      std::vector<json> choices = chat_delta_choices(reply, delta, tool_calls_sent);
      if (reply.logprobs && !event.logprobs.empty()) {
        // The event's tokens' logprobs ride on its first piece, or on an empty delta while the parser
        // holds the text back (a possible <think> or <tool_call> marker).
        if (choices.empty()) choices.push_back(delta_choice(json::object()));
        choices.front()["logprobs"] = choice_logprobs(reply, tokenizer_, event.logprobs, text_offset);
      }
      for (const json& choice : choices) {
        if (!write(chunk_json(reply, choice))) return;
      }
    } else if (!event.text.empty() || !event.logprobs.empty()) {
      const json logprobs = choice_logprobs(reply, tokenizer_, event.logprobs, text_offset);
      if (!write(chunk_json(reply, choice_json(reply, event.text, nullptr, false, logprobs)))) return;
    }
    if (event.finished) break;
  }
  sequence.finished();
  if (!event.error.empty()) {
    write({{"error", {{"message", event.error}, {"type", "server_error"}, {"code", 500}}}});
  } else {
    const std::string finish = reply.chat ? chat_finish_reason(event.finish_reason, tool_calls_sent)
                                          : finish_reason_name(event.finish_reason);
    if (!write(chunk_json(reply, choice_json(reply, "", finish, false)))) return;
    if (reply.include_usage) {
      json usage = chunk_json(reply, nullptr);
      usage["choices"] = json::array();
      usage["usage"] = usage_json(event);
      if (!write(usage)) return;
    }
  }
  http_reply.write("data: [DONE]\n\n");
}

}  // namespace uberlm
