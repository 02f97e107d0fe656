#pragma once
// The OpenAI-compatible HTTP front end over an Engine: /v1/completions, /v1/chat/completions
// (JSON or SSE streaming, with usage), /v1/models, /health and /metrics (Prometheus). HTTP threads
// parse, render chats with the model's chat template and tokenize, submit to the engine and relay its
// events; a chat reply's <think> text comes back as reasoning_content and its tool calls as tool_calls
// (server/chat_output_parser.h). A client that goes away cancels its sequence. With an API key, /v1/* and
// /metrics need "Authorization: Bearer <key>" (/health stays open for probes). HTTP itself (deadlines,
// limits, framing) is server/http_server.h's.
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "server/http_server.h"
#include "runtime/metrics.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"

namespace uberlm {

struct ServerConfig {
  HttpServerConfig http;
  std::string model_name;
  std::string api_key;  // empty: no authentication; else it guards /v1/* and /metrics
  std::vector<int> stop_token_ids;  // the model's end-of-sequence ids
};

class OpenAiServer {
 public:
  OpenAiServer(Engine& engine, const BpeTokenizer& tokenizer, const ChatTemplate& chat_template, Metrics& metrics,
               ServerConfig config);
  ~OpenAiServer();
  // Binds the listening socket; returns the port. Throws Error when the address is taken.
  int bind();
  // Serves until stop(); call after bind().
  void serve();
  void stop();

 private:
  void add_routes();
  void generate(const HttpRequest& request, HttpReply& reply, bool chat);
  std::vector<int32_t> prompt_tokens(std::string_view text, bool chat) const;

  Engine& engine_;
  const BpeTokenizer& tokenizer_;
  const ChatTemplate& chat_template_;
  Metrics& metrics_;
  ServerConfig config_;
  HttpServer http_;
};

}  // namespace uberlm
