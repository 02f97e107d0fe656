#include "server/openai_server.h"

#include <httplib.h>

#include <sys/socket.h>

#include <chrono>
#include <csignal>
#include <ctime>
#include <iterator>
#include <random>

#include <nlohmann/json.hpp>

#include "server/api_key.h"
#include "server/chat_output_parser.h"
#include "server/connection_watch.h"
#include "server/logprobs_json.h"
#include "server/request_parser.h"

namespace uberlm {

using json = nlohmann::json;

namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(20);
constexpr size_t kMaxBodyBytes = 16u << 20;
constexpr int kListenBacklog = 1024;
constexpr int64_t kDefaultCompletionTokens = 16;  // OpenAI's default for /v1/completions

// The OpenAI parameter behind an EngineRequest field the engine refused.
std::string request_parameter(const std::string& field, bool chat) {
  if (field == "prompt") return chat ? "messages" : "prompt";
  if (field == "stop_strings") return "stop";
  if (field == "sampling") return "";  // the parser has range-checked each sampling parameter already
  return field;
}

// Serialises a reply. Error messages quote what the client sent (a path, a parser's excerpt of the body),
// which may be invalid UTF-8: such bytes become U+FFFD instead of an exception that kills the process.
std::string json_text(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, int status, const std::string& type, const std::string& message,
                const std::string& param = "") {
  json body = {{"error",
                {{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)},
                 {"code", status}}}};
  res.status = status;
  res.set_content(json_text(body), "application/json");
}

// Exactly one Authorization header holding "Bearer <key>". Read from the header map: httplib's
// get_header_value() returns a C string, which ends at a NUL byte and let "Bearer KEY\0x" pass as the key.
bool authorized(const httplib::Request& req, const std::string& key) {
  const auto [first, last] = req.headers.equal_range("Authorization");
  return first != last && std::next(first) == last && bearer_key_matches(first->second, key);
}

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
      http_(std::make_unique<httplib::Server>()) {
  // A client that disconnects mid-response must not kill the process: writes then fail with EPIPE.
  std::signal(SIGPIPE, SIG_IGN);
  const int threads = config_.http_threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  http_->set_payload_max_length(kMaxBodyBytes);
  http_->set_socket_options([this](int socket) {
    httplib::default_socket_options(socket);
    listen_socket_ = socket;
  });
  add_routes();
}

OpenAiServer::~OpenAiServer() { stop(); }

int OpenAiServer::bind() {
  const int port = config_.port == 0 ? http_->bind_to_any_port(config_.host)
                                     : (http_->bind_to_port(config_.host, config_.port) ? config_.port : -1);
  if (port < 0) fail("serve: cannot listen on {}:{}", config_.host, config_.port);
  // cpp-httplib 0.11 listens with a backlog of 5: a burst of clients connecting at once overflows it
  // and some of them lose their request. listen() again on the bound socket raises the backlog.
  if (::listen(listen_socket_, kListenBacklog) != 0) fail("serve: listen on {}:{} failed", config_.host, port);
  return port;
}

void OpenAiServer::serve() { http_->listen_after_bind(); }

void OpenAiServer::stop() { http_->stop(); }

void OpenAiServer::add_routes() {
  http_->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const bool protected_path = req.path.rfind("/v1/", 0) == 0 || req.path == "/metrics";
    if (config_.api_key.empty() || !protected_path) return httplib::Server::HandlerResponse::Unhandled;
    if (authorized(req, config_.api_key)) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="unauthorized")");
    send_error(res, 401, "authentication_error", "missing or wrong API key: send 'Authorization: Bearer <key>'");
    return httplib::Server::HandlerResponse::Handled;
  });
  http_->set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    send_error(res, res.status, "invalid_request_error",
               res.status == 404 ? fmt::format("no route for {} {}", req.method, req.path)
                                 : fmt::format("HTTP {} for {} {}", res.status, req.method, req.path));
  });
  http_->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr error) {
    std::string message = "internal error";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      message = e.what();
    } catch (...) {
    }
    send_error(res, 500, "server_error", message);
  });

  http_->Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(), "text/plain; version=0.0.4");
  });
  http_->Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json model = {{"id", config_.model_name},       {"object", "model"},
                  {"created", std::time(nullptr)},  {"owned_by", "uberlm"},
                  {"max_model_len", engine_.max_model_len()}};
    res.set_content(json_text(json{{"object", "list"}, {"data", json::array({model})}}), "application/json");
  });

  auto generate = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      const int64_t max_len = engine_.max_model_len();
      EngineRequest request;
      GenerationOptions options;
      ChatFormat chat_format;
      std::string echo;
      try {
        if (chat) {
          ChatCompletionRequest parsed = parse_chat_completion_request(req.body, config_.model_name, max_len);
          options = parsed.options;
          for (int id : tokenizer_.encode(render_chat(chat_template_, parsed, chat_format))) request.prompt.push_back(id);
        } else {
          CompletionRequest parsed = parse_completion_request(req.body, config_.model_name, max_len);
          options = parsed.options;
          request.prompt = parsed.prompt_ids;
          if (parsed.prompt_text) {
            for (int id : tokenizer_.encode(*parsed.prompt_text)) request.prompt.push_back(id);
          }
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
        send_error(res, error.status, error.type, error.what(), error.param);
        return;
      } catch (const Error& error) {
        metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="invalid")");
        send_error(res, 400, "invalid_request_error", error.what());
        return;
      }

      std::shared_ptr<RequestStream> stream;
      try {
        stream = engine_.submit(request);
      } catch (const RequestError& error) {
        metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="invalid")");
        send_error(res, 400, "invalid_request_error", error.what(), request_parameter(error.field, chat));
        return;
      }
      if (!stream) {
        metrics_.add(Counter::RejectedRequests, 1.0, R"(reason="queue_full")");
        send_error(res, 503, "server_overloaded", "the server is at capacity (too many queued requests); retry later");
        return;
      }
      Reply reply{chat,
                  options.include_usage,
                  echo,
                  options.top_logprobs >= 0,
                  fmt::format("{}-{}", chat ? "chatcmpl" : "cmpl", stream->id()),
                  config_.model_name,
                  static_cast<int64_t>(std::time(nullptr)),
                  fmt::format("call_{}_", stream->id()),
                  chat_format};
      auto watch = std::make_shared<ConnectionWatch>(req.local_port, req.remote_port);

      if (!options.stream) {
        std::string text = reply.echo;
        std::vector<TokenLogprobs> logprobs;
        StreamEvent event;
        while (true) {
          if (!stream->next(event, kPollInterval)) {
            if (watch->peer_closed()) {
              engine_.cancel(stream->id());
              return;
            }
            continue;
          }
          text += event.text;
          logprobs.insert(logprobs.end(), event.logprobs.begin(), event.logprobs.end());
          if (event.finished) break;
        }
        if (!event.error.empty()) {
          send_error(res, 500, "server_error", event.error);
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
        json body = {{"id", reply.id},
                     {"object", chat ? "chat.completion" : "text_completion"},
                     {"created", reply.created},
                     {"model", reply.model},
                     {"choices", json::array({choice})},
                     {"usage", usage_json(event)}};
        res.set_content(json_text(body), "application/json");
        return;
      }

      struct StreamState {
        bool started = false;
        bool finished = false;
        std::unique_ptr<ChatOutputParser> parser;  // chat only
        size_t tool_calls_sent = 0;
        size_t text_offset = 0;  // of the next token, for completions' logprobs
      };
      auto state = std::make_shared<StreamState>();
      if (chat) state->parser = std::make_unique<ChatOutputParser>(reply.format.output);
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, stream, watch, state, reply](size_t, httplib::DataSink& sink) {
            auto write = [&](const std::string& data) {
              if (sink.write(data.data(), data.size())) return true;
              engine_.cancel(stream->id());
              return false;
            };
            if (!state->started) {
              state->started = true;
              if (reply.chat && !write(sse(chunk_json(reply, choice_json(reply, "", nullptr, true))))) return false;
              if (!reply.echo.empty() && !write(sse(chunk_json(reply, choice_json(reply, reply.echo, nullptr, false))))) {
                return false;
              }
            }
            StreamEvent event;
            if (!stream->next(event, kPollInterval)) {
              if (!watch->peer_closed()) return true;
              engine_.cancel(stream->id());
              return false;
            }
            if (reply.chat) {
              ChatOutputDelta delta = state->parser->feed(event.text);
              if (event.finished) append(delta, state->parser->finish());
              std::vector<json> choices = chat_delta_choices(reply, delta, state->tool_calls_sent);
              if (reply.logprobs && !event.logprobs.empty()) {
                // The event's tokens' logprobs ride on its first piece, or on an empty delta while the parser
                // holds the text back (a possible <think> or <tool_call> marker).
                if (choices.empty()) choices.push_back(delta_choice(json::object()));
                choices.front()["logprobs"] = choice_logprobs(reply, tokenizer_, event.logprobs, state->text_offset);
              }
              for (const json& choice : choices) {
                if (!write(sse(chunk_json(reply, choice)))) return false;
              }
            } else if (!event.text.empty() || !event.logprobs.empty()) {
              const json logprobs = choice_logprobs(reply, tokenizer_, event.logprobs, state->text_offset);
              if (!write(sse(chunk_json(reply, choice_json(reply, event.text, nullptr, false, logprobs))))) return false;
            }
            if (!event.finished) return true;
            state->finished = true;
            if (!event.error.empty()) {
              json error = {{"error", {{"message", event.error}, {"type", "server_error"}, {"code", 500}}}};
              if (!write(sse(error))) return false;
            } else {
              const std::string finish = reply.chat ? chat_finish_reason(event.finish_reason, state->tool_calls_sent)
                                                    : finish_reason_name(event.finish_reason);
              if (!write(sse(chunk_json(reply, choice_json(reply, "", finish, false))))) return false;
              if (reply.include_usage) {
                json usage = chunk_json(reply, nullptr);
                usage["choices"] = json::array();
                usage["usage"] = usage_json(event);
                if (!write(sse(usage))) return false;
              }
            }
            if (!write("data: [DONE]\n\n")) return false;
            sink.done();
            return true;
          },
          [this, stream, state](bool) {
            if (!state->finished) engine_.cancel(stream->id());
          });
    };
  };
  http_->Post("/v1/completions", generate(false));
  http_->Post("/v1/chat/completions", generate(true));
}

}  // namespace uberlm
