#include "eval/completion_sources.h"

#include <httplib.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace uberlm {

namespace {

using json = nlohmann::json;

httplib::Headers auth_headers(const std::string& api_key) {
  if (api_key.empty()) return {};
  return {{"Authorization", "Bearer " + api_key}};
}

std::unique_ptr<httplib::Client> make_client(const std::string& url) {
  auto client = std::make_unique<httplib::Client>(url);
  client->set_connection_timeout(10);
  client->set_read_timeout(1800);
  client->set_write_timeout(60);
  return client;
}

Completion complete_over_http(const std::string& url, const std::string& model_id, const std::string& api_key,
                              const std::string& prompt, int max_tokens) {
  Completion completion;
  const json body = {{"model", model_id}, {"prompt", prompt}, {"temperature", 0}, {"max_tokens", max_tokens}};
  auto res = make_client(url)->Post("/v1/completions", auth_headers(api_key), body.dump(), "application/json");
  if (!res) {
    completion.error = "request failed: " + httplib::to_string(res.error());
    return completion;
  }
  if (res->status != 200) {
    completion.error = fmt::format("HTTP {}: {}", res->status, res->body);
    return completion;
  }
  try {
    const json reply = json::parse(res->body);
    completion.text = reply.at("choices").at(0).at("text").get<std::string>();
    completion.completion_tokens = reply.at("usage").at("completion_tokens").get<int64_t>();
  } catch (const json::exception& error) {
    completion.error = fmt::format("unexpected reply ({})", error.what());
  }
  return completion;
}

Completion complete_in_engine(Engine& engine, const BpeTokenizer& tokenizer, const std::vector<int>& stop_token_ids,
                              const std::string& prompt, int max_tokens) {
  Completion completion;
  EngineRequest request;
  for (int id : tokenizer.encode(prompt)) request.prompt.push_back(id);
  request.max_tokens = max_tokens;
  request.stop_token_ids = stop_token_ids;
  std::shared_ptr<RequestStream> stream;
  try {
    stream = engine.submit(std::move(request));
  } catch (const Error& error) {
    completion.error = error.what();
    return completion;
  }
  if (!stream) {
    completion.error = "the engine's queue is full (more concurrency than --max-num-seqs plus its queue)";
    return completion;
  }
  StreamEvent event;
  do {
    while (!stream->next(event, std::chrono::milliseconds(1000))) {
    }
    completion.text += event.text;
  } while (!event.finished);
  completion.completion_tokens = event.completion_tokens;
  completion.error = event.error;
  return completion;
}

}  // namespace

std::string served_model_id(const std::string& url, const std::string& api_key) {
  auto res = make_client(url)->Get("/v1/models", auth_headers(api_key));
  if (!res) fail("GET {}/v1/models failed: {}", url, httplib::to_string(res.error()));
  if (res->status != 200) fail("GET {}/v1/models: HTTP {}: {}", url, res->status, res->body);
  try {
    return json::parse(res->body).at("data").at(0).at("id").get<std::string>();
  } catch (const json::exception& error) {
    fail("{}/v1/models: unexpected reply ({})", url, error.what());
  }
}

CompletionSource openai_completion_source(const std::string& url, const std::string& model_id,
                                          const std::string& api_key) {
  return [=](const std::string& prompt, int max_tokens) {
    return complete_over_http(url, model_id, api_key, prompt, max_tokens);
  };
}

CompletionSource engine_completion_source(Engine& engine, const BpeTokenizer& tokenizer,
                                          std::vector<int> stop_token_ids) {
  return [&engine, &tokenizer, stop_token_ids = std::move(stop_token_ids)](const std::string& prompt, int max_tokens) {
    return complete_in_engine(engine, tokenizer, stop_token_ids, prompt, max_tokens);
  };
}

}  // namespace uberlm
