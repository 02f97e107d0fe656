// `uberlm serve` end to end, in process, on loopback: the tiny chat checkpoint made by
// tests/oracle/fixtures_serving.py on the CPU backend. Bad inputs get their status and message; 32
// concurrent clients get the same text as each request alone; a dropped client frees its sequence;
// a greedy request is deterministic alone and under traffic. Every wait is bounded.
#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model.h"
#include "runtime/cpu_backend.h"
#include "runtime/engine.h"
#include "server/api_key.h"
#include "server/openai_server.h"
#include "sse_events.h"

namespace uberlm {
namespace {

using json = nlohmann::json;
using namespace std::string_literals;
constexpr const char* kModelName = "tiny";

std::filesystem::path model_dir() {
  return std::filesystem::path(UBERLM_FIXTURE_DIR) / "serving" / "qwen3_5_chat";
}

struct ServerOptions {
  int max_num_seqs = 8;
  int max_waiting = 64;
  int64_t max_model_len = 512;
  int64_t max_num_batched_tokens = 64;
  int64_t kv_blocks = 0;  // 0: every sequence at full length
  std::string api_key;
};

class TestServer {
 public:
  explicit TestServer(const ServerOptions& options) {
    const auto dir = model_dir();
    if (!std::filesystem::exists(dir)) throw Error("missing fixture " + dir.string());
    model_ = Model::load(dir);
    tokenizer_ = BpeTokenizer::load(dir / "tokenizer.json");
    EngineConfig config;
    config.scheduler.max_num_seqs = options.max_num_seqs;
    config.scheduler.max_model_len = options.max_model_len;
    config.scheduler.max_num_batched_tokens = options.max_num_batched_tokens;
    config.scheduler.num_slots = options.max_num_seqs;
    config.scheduler.num_kv_blocks =
        options.kv_blocks > 0 ? options.kv_blocks : options.max_num_seqs * options.max_model_len / 16;
    config.max_waiting = options.max_waiting;
    backend_ = std::make_unique<CpuBackend>(*model_, options.max_num_seqs);
    engine_ = std::make_unique<Engine>(*backend_, tokenizer_.get(), config, metrics_);
    ServerConfig server_config;
    server_config.http.host = "127.0.0.1";
    server_config.http.port = 0;
    server_config.model_name = kModelName;
    server_config.api_key = options.api_key;
    server_config.stop_token_ids = model_->stop_token_ids;
    server_ = std::make_unique<OpenAiServer>(*engine_, *tokenizer_, chat_template_, metrics_, server_config);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
  }
  ~TestServer() {
    server_->stop();
    thread_.join();
  }
  std::unique_ptr<httplib::Client> client() const {
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port_);
    c->set_read_timeout(60);
    return c;
  }
  Engine& engine() { return *engine_; }
  Metrics& metrics() { return metrics_; }
  int port() const { return port_; }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<BpeTokenizer> tokenizer_;
  ChatTemplate chat_template_ = ChatTemplate::chatml();
  std::unique_ptr<CpuBackend> backend_;
  Metrics metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<OpenAiServer> server_;
  int port_ = 0;
  std::thread thread_;
};

// Waits (bounded) until `done` holds.
bool eventually(const std::function<bool()>& done, std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

// The generated text of a request: the JSON reply's, or the SSE deltas' concatenation.
std::string post_text(httplib::Client& client, const std::string& path, const json& body, std::string* error) {
  auto res = client.Post(path.c_str(), body.dump(), "application/json");
  if (!res) {
    *error = "no response: " + httplib::to_string(res.error());
    return "";
  }
  if (res->status != 200) {
    *error = fmt::format("HTTP {}: {}", res->status, res->body);
    return "";
  }
  const bool chat = path == "/v1/chat/completions";
  if (!body.value("stream", false)) {
    json reply = json::parse(res->body);
    return chat ? reply["choices"][0]["message"]["content"].get<std::string>()
                : reply["choices"][0]["text"].get<std::string>();
  }
  std::string text;
  const SseEvents events = sse_events(res->body);
  for (const auto& chunk : events.chunks) {
    if (chunk["choices"].empty()) continue;
    const auto& choice = chunk["choices"][0];
    if (chat && choice["delta"].contains("content")) text += choice["delta"]["content"].get<std::string>();
    if (!chat) text += choice["text"].get<std::string>();
  }
  if (!events.done) *error = "stream without [DONE]";
  return text;
}

struct BadInput {
  std::string name;
  std::string path;
  std::string body;
  int status;
  std::string message;  // a substring of error.message
};

TEST(Server, BadInputsGetTheirStatusAndMessage) {
  TestServer server(ServerOptions{.max_model_len = 64});
  auto client = server.client();
  const std::string long_prompt = json(std::string(2000, 'x') + " y z").dump();
  const std::vector<BadInput> cases = {
      {"invalid_json", "/v1/completions", R"({"model": "tiny", "prompt": )", 400, "not valid JSON"},
      {"not_an_object", "/v1/completions", R"([1, 2])", 400, "must be a JSON object"},
      {"wrong_type", "/v1/completions", R"({"model": "tiny", "prompt": "a", "max_tokens": "ten"})", 400,
       "'max_tokens' must be an integer"},
      {"negative_max_tokens", "/v1/completions", R"({"model": "tiny", "prompt": "a", "max_tokens": -1})", 400,
       "'max_tokens' must be between 1 and 64"},
      {"zero_max_tokens", "/v1/completions", R"({"model": "tiny", "prompt": "a", "max_tokens": 0})", 400,
       "'max_tokens' must be between 1 and 64"},
      {"huge_max_tokens", "/v1/completions", R"({"model": "tiny", "prompt": "a", "max_tokens": 18446744073709551615})",
       400, "'max_tokens' must be between"},
      {"context_overflow", "/v1/completions", R"({"model": "tiny", "prompt": "a b c", "max_tokens": 63})", 400,
       "maximum context length is 64 tokens"},
      {"prompt_too_long", "/v1/completions", R"({"model": "tiny", "max_tokens": 1, "prompt": )" + long_prompt + "}",
       400, "max-model-len 64"},
      {"unknown_model", "/v1/completions", R"({"model": "gpt-9", "prompt": "a"})", 400, "'gpt-9' does not exist"},
      {"missing_prompt", "/v1/completions", R"({"model": "tiny"})", 400, "'prompt' is required"},
      {"empty_prompt", "/v1/completions", R"({"model": "tiny", "prompt": ""})", 400, "must not be empty"},
      {"token_outside_vocab", "/v1/completions", R"({"model": "tiny", "prompt": [1, 999999]})", 400,
       "outside the vocabulary"},
      {"temperature_range", "/v1/completions", R"({"model": "tiny", "prompt": "a", "temperature": -0.5})", 400,
       "'temperature' must be in [0, 2]"},
      {"top_p_zero", "/v1/completions", R"({"model": "tiny", "prompt": "a", "top_p": 0})", 400, "'top_p' must be in (0"},
      {"stop_type", "/v1/completions", R"({"model": "tiny", "prompt": "a", "stop": 5})", 400, "'stop' must be a string"},
      {"n_two", "/v1/completions", R"({"model": "tiny", "prompt": "a", "n": 2})", 400, "only n = 1"},
      {"empty_messages", "/v1/chat/completions", R"({"model": "tiny", "messages": []})", 400,
       "'messages' must not be empty"},
      {"bad_role", "/v1/chat/completions", R"({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]})",
       400, "unknown role 'wizard'"},
      {"message_not_object", "/v1/chat/completions", R"({"model": "tiny", "messages": ["hi"]})", 400,
       "each message must be an object"},
      {"stream_type", "/v1/chat/completions",
       R"({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"})", 400,
       "'stream' must be a boolean"},
      {"unknown_route", "/v1/embeddings", R"({})", 404, "no route for POST /v1/embeddings"},
  };
  for (const BadInput& c : cases) {
    auto res = client->Post(c.path.c_str(), c.body, "application/json");
    ASSERT_TRUE(res) << c.name;
    EXPECT_EQ(res->status, c.status) << c.name << ": " << res->body;
    json body = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << c.name << ": " << res->body;
    EXPECT_NE(body["error"]["message"].get<std::string>().find(c.message), std::string::npos)
        << c.name << ": " << res->body;
    EXPECT_TRUE(body["error"]["type"].is_string()) << c.name;
  }
  // The server still serves after all of that.
  std::string error;
  EXPECT_FALSE(post_text(*client, "/v1/completions", {{"model", kModelName}, {"prompt", "a"}, {"max_tokens", 3}}, &error)
                   .empty());
  EXPECT_EQ(error, "");
}

// The engine checks a request's limits (the one place); the server names the OpenAI parameter at fault.
TEST(Server, EngineLimitErrorsNameTheParameter) {
  TestServer server(ServerOptions{.max_model_len = 64});
  auto client = server.client();
  const std::string long_prompt = json(std::string(2000, 'x') + " y z").dump();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/v1/completions", R"({"model": "tiny", "prompt": "a b c", "max_tokens": 63})"},
      {"/v1/completions", R"({"model": "tiny", "max_tokens": 1, "prompt": )" + long_prompt + "}"},
      {"/v1/completions", R"({"model": "tiny", "prompt": [1, 999999]})"},
      {"/v1/chat/completions", R"({"model": "tiny", "messages": [{"role": "user", "content": )" + long_prompt + "}]}"},
  };
  const std::vector<std::string> params = {"max_tokens", "prompt", "prompt", "messages"};
  for (size_t i = 0; i < cases.size(); ++i) {
    auto res = client->Post(cases[i].first.c_str(), cases[i].second, "application/json");
    ASSERT_TRUE(res) << i;
    EXPECT_EQ(res->status, 400) << i << ": " << res->body;
    const json body = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << i << ": " << res->body;
    EXPECT_EQ(body["error"]["param"], params[i]) << i << ": " << res->body;
  }
}

// Sends `bytes` as they are on a fresh connection and returns everything the server answers until it
// closes the connection or 10 s pass (HTTP clients normalise what this test must send raw).
std::string raw_exchange(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
      ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size())) {
    char buffer[4096];
    for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) reply.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return reply;
}

int status_of(const std::string& reply) {
  return reply.rfind("HTTP/1.1 ", 0) == 0 ? std::atoi(reply.c_str() + 9) : -1;
}

// Invalid UTF-8 anywhere a client can put it (path, method, JSON strings) gets a 4xx with a JSON error,
// never a crash: an error message that quoted the raw path once killed the process (issue 19).
TEST(Server, InvalidUtf8InPathMethodOrBodyIsAClientError) {
  for (const std::string& api_key : {std::string(), std::string("sesame")}) {
    TestServer server(ServerOptions{.api_key = api_key});
    const std::string close = "Host: x\r\nConnection: close\r\n";
    const std::vector<std::pair<std::string, int>> cases = {
        {"GET /%ff HTTP/1.1\r\n" + close + "\r\n", 404},
        {"GET /%c3%28 HTTP/1.1\r\n" + close + "\r\n", 404},
        {"GET /\xff\xfe HTTP/1.1\r\n" + close + "\r\n", 404},
        {"G\xffT / HTTP/1.1\r\n" + close + "\r\n", 400},
    };
    for (const auto& [request, expected] : cases) {
      const std::string reply = raw_exchange(server.port(), request);
      EXPECT_EQ(status_of(reply), expected) << json(request).dump(-1, ' ', true, json::error_handler_t::replace)
                                            << " with key '" << api_key << "': " << reply.substr(0, 300);
      const size_t body_at = reply.find("\r\n\r\n");
      ASSERT_NE(body_at, std::string::npos);
      json body = json::parse(reply.substr(body_at + 4), nullptr, false);
      EXPECT_TRUE(body.is_object() && body.contains("error")) << reply.substr(0, 300);
    }
    auto client = server.client();
    const httplib::Headers auth = api_key.empty() ? httplib::Headers{} : httplib::Headers{{"Authorization", "Bearer sesame"}};
    for (const std::string& body : {std::string(R"({"model": "tiny", "prompt": "a\xff\xfeb"})"),
                                    std::string("{\"model\": \"ti\xc3\x28ny\", \"prompt\": \"a\"}")}) {
      auto res = client->Post("/v1/completions", auth, body, "application/json");
      ASSERT_TRUE(res);
      EXPECT_EQ(res->status, 400) << res->body;
      EXPECT_NE(res->body.find("not valid JSON"), std::string::npos) << res->body;
    }
    auto res = client->Post("/v1/completions/%ff", auth, "{}", "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 404);
    res = client->Get("/health");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
  }
}

TEST(Server, ApiKeyIsRequiredOnV1) {
  TestServer server(ServerOptions{.api_key = "sesame"});
  auto client = server.client();
  auto res = client->Get("/v1/models");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_NE(res->body.find("API key"), std::string::npos);
  res = client->Get("/v1/models", {{"Authorization", "Bearer wrong"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  res = client->Get("/v1/models", {{"Authorization", "Bearer sesame"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(json::parse(res->body)["data"][0]["id"], kModelName);
  res = client->Get("/health");  // probes need no key
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

// The key is compared byte for byte on the whole header value: a NUL byte used to end the comparison.
TEST(Server, ApiKeyIsComparedByteForByteAndGuardsMetrics) {
  EXPECT_TRUE(bearer_key_matches("Bearer sesame", "sesame"));
  for (const std::string& wrong : {"Bearer sesame\0x"s, std::string("Bearer sesam"),
                                   std::string("Bearer sesamex"), std::string("bearer sesame"), std::string("sesame"),
                                   std::string("Bearer Sesame"), std::string()}) {
    EXPECT_FALSE(bearer_key_matches(wrong, "sesame")) << json(wrong).dump();
  }
  TestServer server(ServerOptions{.api_key = "sesame"});
  const std::string get = "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  EXPECT_EQ(status_of(raw_exchange(server.port(), get + "Authorization: Bearer sesame\r\n\r\n")), 200);
  // A NUL byte in a header value is malformed HTTP (RFC 9110 5.5): refused before the key is compared.
  EXPECT_EQ(status_of(raw_exchange(server.port(), get + "Authorization: Bearer sesame\0x\r\n\r\n"s)),
            400);
  EXPECT_EQ(status_of(raw_exchange(server.port(), get + "Authorization: Bearer sesame\r\nAuthorization: Bearer x\r\n\r\n")),
            401);
  auto client = server.client();
  auto res = client->Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_NE(res->body.find("API key"), std::string::npos) << res->body;
  res = client->Get("/metrics", {{"Authorization", "Bearer sesame"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client->Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

struct RefusedField {
  std::string name;
  std::string path;
  json fields;        // added to a valid request
  std::string param;  // error.param
  std::string message;  // a substring of error.message
};

// Every parameter is implemented or refused with a 400 whose error names it; the server serves on.
TEST(Server, UnimplementedOrBadParametersAreRefusedByName) {
  TestServer server(ServerOptions{});
  auto client = server.client();
  const json completion = {{"model", kModelName}, {"prompt", "a"}, {"max_tokens", 2}};
  const json chat = {{"model", kModelName}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 2}};
  const std::string c = "/v1/completions", ch = "/v1/chat/completions";
  const std::vector<RefusedField> cases = {
      {"response_format", ch, {{"response_format", {{"type", "json_object"}}}}, "response_format", "not supported"},
      {"logprobs_range", c, {{"logprobs", 6}}, "logprobs", "'logprobs' must be between 0 and 5"},
      {"chat_logprobs_type", ch, {{"logprobs", 2}}, "logprobs", "'logprobs' must be a boolean"},
      {"top_logprobs_alone", ch, {{"top_logprobs", 3}}, "top_logprobs", "needs 'logprobs': true"},
      {"top_logprobs_range", ch, {{"logprobs", true}, {"top_logprobs", 21}}, "top_logprobs", "between 0 and 20"},
      {"echo_with_logprobs", c, {{"echo", true}, {"logprobs", 1}}, "echo", "'echo' with 'logprobs'"},
      {"top_logprobs_in_completions", c, {{"top_logprobs", 1}}, "top_logprobs", "not a parameter of /v1/completions"},
      {"best_of", c, {{"best_of", 2}}, "best_of", "not supported"},
      {"suffix", c, {{"suffix", "x"}}, "suffix", "not supported"},
      {"tools_in_completions", c, {{"tools", {{{"type", "function"}}}}}, "tools", "not supported"},
      {"tools_malformed", ch, {{"tools", {{{"type", "function"}}}}}, "tools[0].function", "must be an object"},
      {"unknown", c, {{"frobnicate", 1}}, "frobnicate", "not a parameter of /v1/completions"},
      {"echo_in_chat", ch, {{"echo", true}}, "echo", "not a parameter of /v1/chat/completions"},
      {"stream_options", c, {{"stream_options", {{"continuous_usage_stats", true}}}},
       "stream_options.continuous_usage_stats", "not supported"},
      {"seed_beyond_64_bits", c, {{"seed", json::parse("1180591620717411303424")}}, "seed", "'seed' is out of range"},
      {"seed_below_64_bits", c, {{"seed", json::parse("-9223372036854775809")}}, "seed", "'seed' is out of range"},
      {"seed_type", c, {{"seed", "7"}}, "seed", "must be an integer"},
      {"min_p", c, {{"min_p", 1.5}}, "min_p", "'min_p' must be in [0, 1]"},
      {"presence_penalty", c, {{"presence_penalty", 2.5}}, "presence_penalty", "must be in [-2, 2]"},
      {"frequency_penalty", ch, {{"frequency_penalty", -3}}, "frequency_penalty", "must be in [-2, 2]"},
      {"repetition_penalty", c, {{"repetition_penalty", 0}}, "repetition_penalty", "must be in (0"},
      {"logit_bias_type", c, {{"logit_bias", {1, 2}}}, "logit_bias", "must be an object"},
      {"logit_bias_key", c, {{"logit_bias", {{"01", 1}}}}, "logit_bias", "keys must be token ids"},
      {"logit_bias_value", c, {{"logit_bias", {{"1", 101}}}}, "logit_bias", "[-100, 100]"},
      {"logit_bias_outside_vocab", c, {{"logit_bias", {{"999999", 1}}}}, "logit_bias", "outside the vocabulary"},
      {"prompt_outside_vocab", c, {{"prompt", {1, 999999}}}, "prompt", "outside the vocabulary"},
      {"echo_type", c, {{"echo", "yes"}}, "echo", "must be a boolean"},
      {"user_type", ch, {{"user", 5}}, "user", "must be a string"},
  };
  for (const RefusedField& refused : cases) {
    json body = refused.path == c ? completion : chat;
    body.update(refused.fields);
    auto res = client->Post(refused.path.c_str(), body.dump(), "application/json");
    ASSERT_TRUE(res) << refused.name;
    EXPECT_EQ(res->status, 400) << refused.name << ": " << res->body;
    json reply = json::parse(res->body, nullptr, false);
    ASSERT_TRUE(reply.is_object() && reply.contains("error")) << refused.name << ": " << res->body;
    EXPECT_EQ(reply["error"]["param"], refused.param) << refused.name << ": " << res->body;
    EXPECT_NE(reply["error"]["message"].get<std::string>().find(refused.message), std::string::npos)
        << refused.name << ": " << res->body;
  }
  // The values that ask for nothing beyond plain generation are accepted.
  for (const json& neutral : {json{{"logprobs", false}}, json{{"response_format", {{"type", "text"}}}},
                              json{{"tools", json::array()}}, json{{"user", "u-1"}}, json{{"top_logprobs", nullptr}},
                              json{{"best_of", 1}}, json{{"tool_choice", "none"}},
                              json{{"seed", 18446744073709551615ULL}}, json{{"seed", -9223372036854775807LL - 1}}}) {
    json body = chat;
    body.update(neutral);
    auto res = client->Post(ch.c_str(), body.dump(), "application/json");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << neutral.dump() << ": " << res->body;
  }
  auto res = client->Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

// The sampling parameters reach each request's sampler (their arithmetic is tested in sampler_test.cpp).
TEST(Server, SamplingParametersAndEchoShapeTheOutput) {
  TestServer server(ServerOptions{});
  auto client = server.client();
  const auto tokenizer = BpeTokenizer::load(model_dir() / "tokenizer.json");
  const std::vector<int> a = tokenizer->encode("a");
  ASSERT_EQ(a.size(), 1u);
  const std::string a_id = std::to_string(a[0]);
  const json base = {{"model", kModelName}, {"prompt", "Q: count the eggs\nA:"}, {"temperature", 0}};
  auto text_of = [&](json fields) {
    json body = base;
    body.update(fields);
    std::string error;
    const std::string text = post_text(*client, "/v1/completions", body, &error);
    EXPECT_EQ(error, "") << fields.dump();
    return text;
  };
  // A bias of 100 outweighs any logit of the model.
  EXPECT_EQ(text_of({{"max_tokens", 4}, {"logit_bias", {{a_id, 100}}}}), "aaaa");
  // Frequency penalty 2 takes 2 off per occurrence: the bias's lead of 100 over the model's other logits
  // is gone within 100 - (logit spread) / 2 < 100 tokens, so the run of 'a' must end.
  const std::string penalised = text_of({{"max_tokens", 100}, {"logit_bias", {{a_id, 100}}}, {"frequency_penalty", 2}});
  EXPECT_NE(penalised, std::string(100, 'a'));
  EXPECT_EQ(penalised.rfind('a', 0), 0u) << penalised;
  // A repetition penalty of 1e6 leaves a repeated token's positive logit near 0: 'a' does not come thrice.
  EXPECT_NE(text_of({{"max_tokens", 3}, {"logit_bias", {{a_id, 100}}}, {"repetition_penalty", 1e6}}), "aaa");
  // min_p 1 keeps only the most likely token: sampling at temperature 1 gives the greedy text.
  const std::string greedy = text_of({{"max_tokens", 12}});
  EXPECT_EQ(text_of({{"max_tokens", 12}, {"temperature", 1}, {"min_p", 1}, {"seed", 3}}), greedy);
  // echo: the prompt's text, then the same generation; streamed too, and for a token-id prompt.
  EXPECT_EQ(text_of({{"max_tokens", 12}, {"echo", true}}), base["prompt"].get<std::string>() + greedy);
  EXPECT_EQ(text_of({{"max_tokens", 12}, {"echo", true}, {"stream", true}}), base["prompt"].get<std::string>() + greedy);
  const std::vector<int> prompt_ids = tokenizer->encode(base["prompt"].get<std::string>());
  EXPECT_EQ(text_of({{"max_tokens", 12}, {"echo", true}, {"prompt", prompt_ids}}), base["prompt"].get<std::string>() + greedy);
}

// Logprobs in OpenAI's shapes, JSON and SSE: a greedy token is the most likely one, and the tokens' texts
// make up the reply's text.
TEST(Server, LogprobsComeInOpenAisShapes) {
  TestServer server(ServerOptions{});
  auto client = server.client();
  const json completion = {{"model", kModelName}, {"prompt", "Q: count the eggs\nA:"}, {"temperature", 0},
                           {"max_tokens", 10}, {"logprobs", 3}};
  auto res = client->Post("/v1/completions", completion.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  json reply = json::parse(res->body);
  const json& choice = reply["choices"][0];
  const json& logprobs = choice["logprobs"];
  const size_t count = logprobs["tokens"].size();
  ASSERT_EQ(static_cast<int64_t>(count), reply["usage"]["completion_tokens"].get<int64_t>());
  std::string joined;
  for (size_t i = 0; i < count; ++i) {
    EXPECT_EQ(logprobs["text_offset"][i].get<size_t>(), joined.size()) << i;
    joined += logprobs["tokens"][i].get<std::string>();
    const json& top = logprobs["top_logprobs"][i];
    ASSERT_EQ(top.size(), 3u) << i;
    double best = -INFINITY;
    for (const auto& [text, logprob] : top.items()) best = std::max(best, logprob.get<double>());
    EXPECT_EQ(logprobs["token_logprobs"][i].get<double>(), best) << i;
    EXPECT_LE(best, 0.0);
  }
  EXPECT_EQ(joined, choice["text"].get<std::string>());

  json streamed = completion;
  streamed["stream"] = true;
  res = client->Post("/v1/completions", streamed.dump(), "application/json");
  ASSERT_TRUE(res);
  std::vector<double> streamed_logprobs;
  for (size_t at = 0; (at = res->body.find("data: {", at)) != std::string::npos;) {
    const size_t end = res->body.find("\n\n", at);
    const json chunk = json::parse(res->body.substr(at + 6, end - at - 6));
    at = end;
    const json& chunk_logprobs = chunk["choices"][0]["logprobs"];
    if (chunk_logprobs.is_null()) continue;
    for (const json& logprob : chunk_logprobs["token_logprobs"]) streamed_logprobs.push_back(logprob.get<double>());
  }
  EXPECT_EQ(streamed_logprobs, logprobs["token_logprobs"].get<std::vector<double>>());

  const json chat = {{"model", kModelName}, {"messages", {{{"role", "user"}, {"content", "Count to five."}}}},
                     {"temperature", 0}, {"max_tokens", 8}, {"logprobs", true}, {"top_logprobs", 2}};
  res = client->Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  reply = json::parse(res->body);
  std::string content;
  for (const json& entry : reply["choices"][0]["logprobs"]["content"]) {
    content += entry["token"].get<std::string>();
    ASSERT_EQ(entry["top_logprobs"].size(), 2u);
    EXPECT_EQ(entry["top_logprobs"][0]["logprob"], entry["logprob"]);
    EXPECT_EQ(entry["top_logprobs"][0]["token"], entry["token"]);
    std::string bytes;
    for (const json& byte : entry["bytes"]) bytes += static_cast<char>(byte.get<int>());
    EXPECT_EQ(bytes, entry["token"].get<std::string>());
  }
  EXPECT_EQ(content, reply["choices"][0]["message"]["content"].get<std::string>());
}

// On the real model, a generated token's logprob equals the one the scoring path (score_prompt, as
// `eval ppl` uses) gives the same token after the same text: both are log softmax of logits that do
// not depend on the batch, so they agree to double rounding.
TEST(Server, GeneratedLogprobsEqualTheScoringPaths) {
  TestServer server(ServerOptions{});
  const auto tokenizer = BpeTokenizer::load(model_dir() / "tokenizer.json");
  EngineRequest request;
  for (int id : tokenizer->encode("Q: Tom has 3 apples and buys 5 more.\nA:")) request.prompt.push_back(id);
  request.max_tokens = 12;
  request.sampling = {.temperature = 0.7f, .seed = 11};
  request.top_logprobs = 0;
  auto stream = server.engine().submit(request);
  ASSERT_NE(stream, nullptr);
  std::vector<int32_t> generated;
  std::vector<double> logprobs;
  StreamEvent event;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!event.finished && std::chrono::steady_clock::now() < deadline) {
    if (!stream->next(event, std::chrono::milliseconds(100))) continue;
    generated.insert(generated.end(), event.tokens.begin(), event.tokens.end());
    for (const TokenLogprobs& token : event.logprobs) logprobs.push_back(token.logprob);
  }
  ASSERT_TRUE(event.finished);
  ASSERT_FALSE(generated.empty());
  ASSERT_EQ(logprobs.size(), generated.size());

  EngineRequest scoring;
  scoring.prompt = request.prompt;
  scoring.prompt.insert(scoring.prompt.end(), generated.begin(), generated.end());
  scoring.max_tokens = 0;
  scoring.score_prompt = true;
  stream = server.engine().submit(scoring);
  ASSERT_NE(stream, nullptr);
  event = StreamEvent{};
  while (!event.finished && std::chrono::steady_clock::now() < deadline) stream->next(event, std::chrono::milliseconds(100));
  ASSERT_TRUE(event.finished);
  ASSERT_EQ(event.prompt_logprobs.size(), scoring.prompt.size());
  for (size_t i = 0; i < generated.size(); ++i) {
    EXPECT_NEAR(logprobs[i], event.prompt_logprobs[request.prompt.size() + i], 1e-12) << "token " << i;
  }
}

// Starts a streaming request whose client hangs up when `drop` is set (or after the stream ends).
std::thread streaming_client(TestServer& server, const std::atomic<bool>& drop, std::atomic<int>& chunks,
                             int max_tokens) {
  return std::thread([&server, &drop, &chunks, max_tokens] {
    auto client = server.client();
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = {{"Content-Type", "application/json"}};
    req.body = json{{"model", kModelName}, {"prompt", "Q: count"}, {"max_tokens", max_tokens}, {"stream", true}}.dump();
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      ++chunks;
      return !drop.load();
    };
    client->send(req);
  });
}

TEST(Server, FullQueueGets503AndDroppedClientsFreeTheirSequences) {
  TestServer server(ServerOptions{.max_num_seqs = 1, .max_waiting = 1});
  std::atomic<bool> drop{false};
  std::atomic<int> chunks{0};
  std::thread first = streaming_client(server, drop, chunks, 400);
  ASSERT_TRUE(eventually([&] { return chunks.load() > 0; }));  // the first is running
  std::thread second = streaming_client(server, drop, chunks, 400);
  ASSERT_TRUE(eventually([&] { return server.engine().in_flight() == 2; }));
  auto client = server.client();
  auto res = client->Post("/v1/completions", json{{"model", kModelName}, {"prompt", "hi"}}.dump(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_NE(res->body.find("at capacity"), std::string::npos);
  drop = true;
  first.join();
  second.join();
  // Both dropped streams are cancelled and free their caches well before 400 tokens could be generated.
  EXPECT_TRUE(eventually([&] { return server.engine().in_flight() == 0; }, std::chrono::seconds(5)));
  std::string metrics;
  EXPECT_TRUE(eventually([&] {
    auto res = client->Get("/metrics");
    metrics = res ? res->body : "";
    return metrics.find("uberlm_running_sequences 0\n") != std::string::npos;
  }, std::chrono::seconds(5)));
  EXPECT_NE(metrics.find("uberlm_requests_total{finish_reason=\"cancelled\"} 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("uberlm_running_sequences 0\n"), std::string::npos);
  EXPECT_NE(metrics.find("uberlm_kv_cache_blocks_used 0\n"), std::string::npos);
  EXPECT_NE(metrics.find("uberlm_rejected_requests_total{reason=\"queue_full\"} 1"), std::string::npos);
  EXPECT_LT(server.metrics().value(Counter::GenerationTokens), 700.0);
}

// Request `index` of the load mix: completions and chat, JSON and SSE, greedy and seeded sampling.
std::pair<std::string, json> load_request(int index) {
  const bool chat = index % 2 == 1;
  json body = {{"model", kModelName}, {"max_tokens", 12 + index % 5 * 4}, {"stream", index % 4 >= 2}};
  const std::string text = fmt::format("Question {}: how many apples does Tom have after {} days?", index, index * 3);
  if (chat) {
    body["messages"] = {{{"role", "user"}, {"content", text}}};
  } else {
    body["prompt"] = text;
  }
  if (index % 3 == 0) {
    body["temperature"] = 0.8;
    body["top_p"] = 0.9;
    body["seed"] = 1000 + index;
  } else {
    body["temperature"] = 0;
  }
  return {chat ? "/v1/chat/completions" : "/v1/completions", body};
}

TEST(Server, LoadOf32ClientsMatchesLoneRunsAndDropsFreeSequences) {
  constexpr int kClients = 32, kPerClient = 8, kDistinct = 16;
  // 12 KV blocks (192 tokens) for 8 running sequences of up to ~60 tokens: preemption happens under this load.
  TestServer server(ServerOptions{.max_num_seqs = 8, .max_waiting = 64, .max_model_len = 128,
                                  .max_num_batched_tokens = 48, .kv_blocks = 12});
  std::vector<std::string> alone(kDistinct);
  {
    auto client = server.client();
    for (int i = 0; i < kDistinct; ++i) {
      std::string error;
      auto [path, body] = load_request(i);
      alone[i] = post_text(*client, path, body, &error);
      ASSERT_EQ(error, "") << "request " << i;
      ASSERT_FALSE(alone[i].empty()) << "request " << i;
    }
  }
  std::atomic<int> errors{0}, mismatches{0};
  std::atomic<bool> drop{true};  // the dropped stream hangs up on its first chunk, while the load runs
  std::atomic<int> dropped_chunks{0};
  std::thread dropper = streaming_client(server, drop, dropped_chunks, 100);
  std::vector<std::thread> clients;
  const auto start = std::chrono::steady_clock::now();
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      auto client = server.client();
      for (int r = 0; r < kPerClient; ++r) {
        const int index = (c * kPerClient + r) % kDistinct;
        auto [path, body] = load_request(index);
        std::string error;
        const auto t0 = std::chrono::steady_clock::now();
        const std::string text = post_text(*client, path, body, &error);
        if (!error.empty()) {
          ++errors;
          ADD_FAILURE() << "client " << c << " request " << r << ": " << error << " after "
                        << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s, at "
                        << std::chrono::duration<double>(t0 - start).count();
        } else if (text != alone[index]) {
          ++mismatches;
          ADD_FAILURE() << "client " << c << " request " << index << ": '" << text << "' != alone '" << alone[index] << "'";
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  dropper.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_TRUE(eventually([&] { return server.engine().in_flight() == 0; }, std::chrono::seconds(5)));
  Metrics& metrics = server.metrics();
  EXPECT_EQ(metrics.value(Counter::Requests, R"(finish_reason="cancelled")"), 1.0);
  // The gauges are refreshed at the end of the engine step that finished the last request.
  EXPECT_TRUE(eventually([&] {
    return metrics.value(Gauge::RunningSequences) == 0.0 && metrics.value(Gauge::KvBlocksUsed) == 0.0;
  }, std::chrono::seconds(5)));
  EXPECT_GT(metrics.value(Counter::EngineSteps, R"(backend="cpu",path="mixed")"), 0.0);
  EXPECT_GT(metrics.value(Counter::Preemptions), 0.0);
  std::printf("load: %d requests from %d clients in %.2f s, %g preemptions\n", kClients * kPerClient, kClients, seconds,
              metrics.value(Counter::Preemptions));
}

TEST(Server, GreedyRequestIsDeterministicAloneAndUnderTraffic) {
  TestServer server(ServerOptions{.max_num_seqs = 8, .max_model_len = 256, .max_num_batched_tokens = 32});
  const json request = {{"model", kModelName},
                        {"prompt", "Q: Janet has 16 eggs and eats 3. How many are left?\nA: Let me solve this step by step.\n"},
                        {"max_tokens", 48},
                        {"temperature", 0}};
  auto client = server.client();
  std::string error;
  const std::string reference = post_text(*client, "/v1/completions", request, &error);
  ASSERT_EQ(error, "");
  ASSERT_FALSE(reference.empty());
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(post_text(*client, "/v1/completions", request, &error), reference) << "alone, replay " << i;
  }
  std::atomic<bool> stop{false};
  std::vector<std::thread> traffic;
  for (int t = 0; t < 4; ++t) {
    traffic.emplace_back([&, t] {
      auto other = server.client();
      for (int i = 0; i < 50 && !stop.load(); ++i) {
        std::string ignored;
        auto [path, body] = load_request(t * 50 + i);
        post_text(*other, path, body, &ignored);
      }
    });
  }
  std::vector<std::thread> replays;
  std::vector<std::string> texts(8);
  for (int i = 0; i < 8; ++i) {
    replays.emplace_back([&, i] {
      std::this_thread::sleep_for(std::chrono::milliseconds(7 * i));
      auto replay_client = server.client();
      std::string replay_error;
      texts[i] = post_text(*replay_client, "/v1/completions", request, &replay_error);
      EXPECT_EQ(replay_error, "");
    });
  }
  for (std::thread& t : replays) t.join();
  stop = true;
  for (std::thread& t : traffic) t.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(texts[i], reference) << "under traffic, replay " << i;
}

}  // namespace
}  // namespace uberlm
