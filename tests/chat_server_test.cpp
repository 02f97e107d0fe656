// Chat features of `uberlm serve` through its HTTP API, in process: the Qwen3.5 chat template renders the
// request (tools, tool results, chat_template_kwargs), and a scripted backend makes the model say a chosen
// reply, so reasoning_content, tool_calls and finish_reason can be checked exactly, streamed and not.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "batch_util.h"
#include "core/error.h"
#include "runtime/engine.h"
#include "server/openai_server.h"
#include "sse_events.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// Says the tokens of `reply` then <|im_end|> whatever the prompt; remembers the last prompt it was given.
class ScriptedBackend : public Backend {
 public:
  explicit ScriptedBackend(int vocab) { config_.vocab_size = vocab; }
  void script(std::vector<int32_t> tokens) {
    std::lock_guard lock(mutex_);
    script_ = std::move(tokens);
  }
  std::vector<int32_t> last_prompt() {
    std::lock_guard lock(mutex_);
    return last_prompt_;
  }
  std::string name() const override { return "scripted"; }
  const ModelConfig& config() const override { return config_; }
  int max_slots() const override { return 2; }
  void release(int) override {}
  ForwardResult forward(const ForwardBatch& batch) override {
    std::lock_guard lock(mutex_);
    ForwardResult result;
    size_t offset = 0;
    for (const SequenceChunk& chunk : batch.chunks) {
      if (chunk.start == 0) {
        said_[chunk.slot] = 0;
        last_prompt_.assign(batch.tokens.begin() + offset, batch.tokens.begin() + offset + chunk.num_tokens);
      }
      offset += chunk.num_tokens;
      if (chunk.logits == LogitRows::None) continue;
      const size_t at = said_[chunk.slot]++;
      const int next = at < script_.size() ? script_[at] : script_.back();
      append_one_hot_row(result, batch, config_.vocab_size, next);
    }
    return result;
  }

 private:
  ModelConfig config_;
  std::mutex mutex_;
  std::vector<int32_t> script_;
  std::vector<int32_t> last_prompt_;
  size_t said_[2] = {0, 0};
};

std::string read_template(const std::string& name) {
  std::ifstream stream(fs::path(UBERLM_SOURCE_DIR) / "tests" / "data" / "chat_templates" / name, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(stream), {});
}

const json kWeatherTool = json::parse(R"({"type": "function", "function": {"name": "get_weather",
  "description": "Weather in a city", "parameters": {"type": "object",
  "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}})");

class ChatServer : public ::testing::Test {
 protected:
  void SetUp() override { start("qwen3_5.jinja"); }
  void TearDown() override { stop(); }

  void start(const std::string& template_name) {
    const fs::path tokenizer_json = fs::path(UBERLM_FIXTURE_DIR) / "tokenizer" / "qwen" / "tokenizer.json";
    if (!fs::exists(tokenizer_json)) throw Error("missing fixture " + tokenizer_json.string());
    tokenizer_ = BpeTokenizer::load(tokenizer_json);
    im_end_ = *tokenizer_->token_id("<|im_end|>");
    chat_template_ = template_name.empty() ? std::make_unique<ChatTemplate>(ChatTemplate::chatml())
                                           : std::make_unique<ChatTemplate>(read_template(template_name), template_name);
    backend_ = std::make_unique<ScriptedBackend>(tokenizer_->vocab_size());
    EngineConfig config;
    config.scheduler.max_num_seqs = 2;
    config.scheduler.num_slots = 2;
    config.scheduler.max_model_len = 4096;
    config.scheduler.max_num_batched_tokens = 4096;
    config.scheduler.num_kv_blocks = 2 * 4096 / 16;
    engine_ = std::make_unique<Engine>(*backend_, tokenizer_.get(), config, metrics_);
    ServerConfig server_config;
    server_config.http.port = 0;
    server_config.model_name = "tiny";
    server_ = std::make_unique<OpenAiServer>(*engine_, *tokenizer_, *chat_template_, metrics_, server_config);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
    // stop() before the thread is listening would be missed and leave serve() running: wait for it.
    httplib::Client client("127.0.0.1", port_);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!client.Get("/health") && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  void stop() {
    server_->stop();
    thread_.join();
    server_.reset();
    engine_.reset();
  }

  // The model's next reply, whatever it is asked.
  void model_says(const std::string& reply) {
    std::vector<int32_t> tokens;
    for (int id : tokenizer_->encode(reply)) tokens.push_back(id);
    tokens.push_back(im_end_);
    backend_->script(tokens);
  }
  std::string last_prompt() {
    const std::vector<int32_t> ids = backend_->last_prompt();
    return tokenizer_->decode(std::vector<int>(ids.begin(), ids.end()));
  }

  json request(const json& messages, json extra = json::object()) {
    json body = {{"model", "tiny"}, {"messages", messages}, {"max_tokens", 200}, {"temperature", 0}};
    for (const auto& item : extra.items()) body[item.key()] = item.value();
    return body;
  }

  std::pair<int, json> post(const json& body) {
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(60);
    auto res = client.Post("/v1/chat/completions", body.dump(), "application/json");
    if (!res) throw Error("no response");
    return {res->status, json::parse(res->body, nullptr, false)};
  }

  // The "data:" chunks of a streamed reply, [DONE] excluded (and required).
  std::vector<json> post_stream(json body) {
    body["stream"] = true;
    httplib::Client client("127.0.0.1", port_);
    client.set_read_timeout(60);
    auto res = client.Post("/v1/chat/completions", body.dump(), "application/json");
    EXPECT_TRUE(res && res->status == 200) << (res ? res->body : "no response");
    if (!res) return {};
    const SseEvents events = sse_events(res->body);
    EXPECT_TRUE(events.done) << res->body;
    return events.chunks;
  }

  std::unique_ptr<BpeTokenizer> tokenizer_;
  int im_end_ = 0;
  std::unique_ptr<ChatTemplate> chat_template_;
  std::unique_ptr<ScriptedBackend> backend_;
  Metrics metrics_;
  std::unique_ptr<Engine> engine_;
  std::unique_ptr<OpenAiServer> server_;
  int port_ = 0;
  std::thread thread_;
};

const json kUserTurn = json::array({{{"role", "user"}, {"content", "What is 2+2?"}}});

TEST_F(ChatServer, ReasoningIsSplitFromContent) {
  model_says("The user asks for 2+2.\nThat is 4.\n</think>\n\nThe answer is 4.");
  const auto [status, reply] = post(request(kUserTurn));
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(last_prompt(), "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n");
  const json& message = reply["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "The user asks for 2+2.\nThat is 4.");
  EXPECT_EQ(message["content"], "The answer is 4.");
  EXPECT_FALSE(message.contains("tool_calls"));
  EXPECT_EQ(reply["choices"][0]["finish_reason"], "stop");
}

TEST_F(ChatServer, ReasoningStreamsAsItsOwnDeltas) {
  model_says("The user asks for 2+2.\nThat is 4.\n</think>\n\nThe answer is 4.");
  std::string reasoning, content;
  std::string finish;
  for (const json& chunk : post_stream(request(kUserTurn))) {
    const json& choice = chunk["choices"][0];
    if (choice["delta"].contains("reasoning_content")) reasoning += choice["delta"]["reasoning_content"].get<std::string>();
    if (choice["delta"].contains("content")) content += choice["delta"]["content"].get<std::string>();
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
    EXPECT_EQ(choice["delta"].dump().find("think>"), std::string::npos) << chunk.dump();
  }
  EXPECT_EQ(reasoning, "The user asks for 2+2.\nThat is 4.");
  EXPECT_EQ(content, "The answer is 4.");
  EXPECT_EQ(finish, "stop");
}

TEST_F(ChatServer, ChatTemplateKwargsReachTheTemplate) {
  model_says("Four.");
  const auto [status, reply] = post(request(kUserTurn, {{"chat_template_kwargs", {{"enable_thinking", false}}}}));
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(last_prompt(), "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(reply["choices"][0]["message"]["content"], "Four.");
  EXPECT_TRUE(reply["choices"][0]["message"]["reasoning_content"].is_null());
}

TEST_F(ChatServer, ToolsAreRenderedAndToolCallsReturned) {
  model_says("I need the weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n"
             "</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>");
  const auto [status, reply] = post(request(kUserTurn, {{"tools", json::array({kWeatherTool})}}));
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_NE(last_prompt().find("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\""), std::string::npos)
      << last_prompt();
  const json& message = reply["choices"][0]["message"];
  EXPECT_TRUE(message["content"].is_null());
  EXPECT_EQ(message["reasoning_content"], "I need the weather.");
  ASSERT_EQ(message["tool_calls"].size(), 1u);
  const json& call = message["tool_calls"][0];
  EXPECT_EQ(call["type"], "function");
  EXPECT_TRUE(call["id"].is_string() && call["id"].get<std::string>().rfind("call_", 0) == 0) << call.dump();
  EXPECT_EQ(call["function"]["name"], "get_weather");
  EXPECT_EQ(json::parse(call["function"]["arguments"].get<std::string>()), json::parse(R"({"city": "Paris", "days": 3})"));
  EXPECT_EQ(reply["choices"][0]["finish_reason"], "tool_calls");
}

TEST_F(ChatServer, ToolCallsStreamAsDeltas) {
  model_says("Checking.\n</think>\n\nOne moment.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
             "</function>\n</tool_call>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n"
             "</function>\n</tool_call>");
  std::vector<json> calls;
  std::string content, finish;
  for (const json& chunk : post_stream(request(kUserTurn, {{"tools", json::array({kWeatherTool})}}))) {
    const json& choice = chunk["choices"][0];
    if (choice["delta"].contains("tool_calls")) {
      for (const json& call : choice["delta"]["tool_calls"]) calls.push_back(call);
    }
    if (choice["delta"].contains("content")) content += choice["delta"]["content"].get<std::string>();
    if (!choice["finish_reason"].is_null()) finish = choice["finish_reason"];
  }
  EXPECT_EQ(content, "One moment.\n");
  ASSERT_EQ(calls.size(), 2u);
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i]["index"], i);
    EXPECT_EQ(calls[i]["type"], "function");
    EXPECT_EQ(calls[i]["function"]["name"], "get_weather");
  }
  EXPECT_NE(calls[0]["id"], calls[1]["id"]);
  EXPECT_EQ(calls[1]["function"]["arguments"], R"({"city":"Rome"})");
  EXPECT_EQ(finish, "tool_calls");
}

TEST_F(ChatServer, ParallelToolCallsFalseReturnsTheFirstCall) {
  model_says("x</think><tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"A\"}}</tool_call>"
             "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"B\"}}</tool_call>");
  const auto [status, reply] = post(request(kUserTurn, {{"tools", json::array({kWeatherTool})}, {"parallel_tool_calls", false}}));
  ASSERT_EQ(status, 200) << reply.dump();
  ASSERT_EQ(reply["choices"][0]["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], R"({"city":"A"})");
}

TEST_F(ChatServer, MalformedToolCallsComeBackAsContent) {
  const std::string broken = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</tool_call>";
  model_says("Hmm.\n</think>\n\n" + broken);
  const auto [status, reply] = post(request(kUserTurn, {{"tools", json::array({kWeatherTool})}}));
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(reply["choices"][0]["message"]["content"], broken);
  EXPECT_FALSE(reply["choices"][0]["message"].contains("tool_calls"));
  EXPECT_EQ(reply["choices"][0]["finish_reason"], "stop");
}

TEST_F(ChatServer, ToolChoiceNoneNeitherRendersNorParsesTools) {
  const std::string call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>";
  model_says("x\n</think>\n\n" + call);
  const auto [status, reply] = post(request(kUserTurn, {{"tools", json::array({kWeatherTool})}, {"tool_choice", "none"}}));
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(last_prompt().find("# Tools"), std::string::npos);
  EXPECT_EQ(reply["choices"][0]["message"]["content"], call);
}

TEST_F(ChatServer, ToolResultsGoBackThroughTheTemplate) {
  model_says("Done.\n</think>\n\nIt is sunny in Paris.");
  const json messages = json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_9", "type": "function",
      "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"days\": 1}"}}]},
    {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}])");
  const auto [status, reply] = post(request(messages, {{"tools", json::array({kWeatherTool})}}));
  ASSERT_EQ(status, 200) << reply.dump();
  const std::string prompt = last_prompt();
  EXPECT_NE(prompt.find("<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n1\n"),
            std::string::npos) << prompt;
  EXPECT_NE(prompt.find("<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n"),
            std::string::npos) << prompt;
  EXPECT_EQ(reply["choices"][0]["message"]["content"], "It is sunny in Paris.");
}

TEST_F(ChatServer, BadChatRequestsAreClientErrorsNamingTheField) {
  const json tools = json::array({kWeatherTool});
  const std::vector<std::tuple<json, std::string, std::string>> cases = {
      {request(kUserTurn, {{"tools", "get_weather"}}), "tools", "'tools' must be an array"},
      {request(kUserTurn, {{"tools", json::array({{{"type", "function"}}})}}), "tools[0].function", "must be an object"},
      {request(kUserTurn, {{"tools", json::array({{{"type", "retrieval"}}})}}), "tools[0].type", "function"},
      {request(kUserTurn, {{"tools", tools}, {"tool_choice", "required"}}), "tool_choice", "constrained decoding"},
      {request(kUserTurn, {{"tools", tools}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}}),
       "tool_choice", "constrained decoding"},
      {request(kUserTurn, {{"chat_template_kwargs", "enable_thinking"}}), "chat_template_kwargs", "must be an object"},
      {request(kUserTurn, {{"chat_template_kwargs", {{"messages", json::array()}}}}), "chat_template_kwargs", "'messages'"},
      {request(kUserTurn, {{"parallel_tool_calls", "no"}}), "parallel_tool_calls", "must be a boolean"},
      {request(json::parse(R"([{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls":
           [{"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}])")),
       "messages[1].tool_calls[0].function.arguments", "JSON object"},
      {request(json::parse(R"([{"role": "user", "content": "hi", "tool_calls": []}])")), "messages[0].tool_calls",
       "only assistant"},
      // The template's own raise_exception: Qwen3.5 needs a user turn.
      {request(json::parse(R"([{"role": "system", "content": "only a system prompt"}])")), "messages",
       "No user query found in messages."},
  };
  for (const auto& [body, param, message] : cases) {
    const auto [status, reply] = post(body);
    EXPECT_EQ(status, 400) << body.dump() << "\n" << reply.dump();
    ASSERT_TRUE(reply.contains("error")) << reply.dump();
    EXPECT_EQ(reply["error"]["param"], param) << reply.dump();
    EXPECT_NE(reply["error"]["message"].get<std::string>().find(message), std::string::npos) << reply.dump();
  }
}

TEST_F(ChatServer, ToolsAndToolCallsNeedATemplateThatRendersThem) {
  stop();
  start("");  // ChatML
  model_says("hi");
  const auto [status, reply] = post(request(kUserTurn, {{"tools", json::array({kWeatherTool})}}));
  EXPECT_EQ(status, 400);
  EXPECT_EQ(reply["error"]["param"], "tools") << reply.dump();
  const auto [calls_status, calls] = post(request(json::parse(R"([{"role": "user", "content": "hi"},
      {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "content": "42"}])")));
  EXPECT_EQ(calls_status, 400);
  EXPECT_EQ(calls["error"]["param"], "messages[1].tool_calls") << calls.dump();
  const auto [plain_status, plain] = post(request(kUserTurn));
  EXPECT_EQ(plain_status, 200) << plain.dump();
  EXPECT_EQ(plain["choices"][0]["message"]["content"], "hi");
  EXPECT_FALSE(plain["choices"][0]["message"].contains("reasoning_content"));
}

TEST_F(ChatServer, Qwen3JsonToolCallsAndThinkBlocksTheModelOpens) {
  stop();
  start("qwen3.jinja");
  model_says("<think>\nWeather needed.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
  const auto [status, reply] = post(request(kUserTurn, {{"tools", json::array({kWeatherTool})}}));
  ASSERT_EQ(status, 200) << reply.dump();
  EXPECT_EQ(last_prompt().substr(last_prompt().size() - 22), "<|im_start|>assistant\n");
  const json& message = reply["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "Weather needed.");
  ASSERT_EQ(message["tool_calls"].size(), 1u);
  EXPECT_EQ(message["tool_calls"][0]["function"]["arguments"], R"({"city":"Oslo"})");
  EXPECT_EQ(reply["choices"][0]["finish_reason"], "tool_calls");
}

}  // namespace
}  // namespace uberlm
