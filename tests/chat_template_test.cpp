// Chat templates: uberlm's Jinja engine against transformers' renderer (tests/oracle/fixtures_chat_templates.py)
// on the real Qwen3.5, Qwen3, Llama 3.2 and SmolLM2 templates (tests/data/chat_templates/) for conversations
// with tools, tool calls, reasoning and enable_thinking on and off, and on one small template per Jinja
// feature; byte for byte, and an error wherever transformers raised one. Then how a checkpoint's template
// is found.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "expect_error.h"
#include "temp_path.h"
#include "tokenizer/chat_template.h"

namespace uberlm {
namespace {

namespace fs = std::filesystem;

fs::path templates_dir() { return fs::path(UBERLM_SOURCE_DIR) / "tests" / "data" / "chat_templates"; }

std::string read_file(const fs::path& path) {
  std::ifstream stream(path, std::ios::binary);
  EXPECT_TRUE(stream) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(stream), {});
}

std::vector<JsonValue> oracle_cases(const std::string& suite) {
  const fs::path path = fs::path(UBERLM_FIXTURE_DIR) / "chat_templates" / "cases.jsonl";
  std::ifstream stream(path);
  EXPECT_TRUE(stream) << "missing fixture " << path << " (run tests/oracle/make_fixtures.py)";
  std::vector<JsonValue> cases;
  std::string line;
  while (std::getline(stream, line)) {
    JsonValue c = JsonValue::parse(line);
    if (c["suite"] == suite) cases.push_back(std::move(c));
  }
  return cases;
}

ChatTemplateInputs inputs_of(const JsonValue& c) {
  ChatTemplateInputs inputs;
  inputs.messages = c["inputs"]["messages"];
  inputs.tools = c["inputs"]["tools"];
  inputs.add_generation_prompt = c["inputs"]["add_generation_prompt"].get<bool>();
  inputs.kwargs = c["inputs"]["kwargs"];
  return inputs;
}

// Renders every case of a suite and compares with transformers; returns how many were checked.
int check_suite(const std::string& suite) {
  int checked = 0;
  for (const JsonValue& c : oracle_cases(suite)) {
    const std::string name = c["name"].get<std::string>();
    const std::string source =
        suite == "models" ? read_file(templates_dir() / c["template"].get<std::string>()) : c["template"].get<std::string>();
    ++checked;
    try {
      const ChatTemplate chat(source, name, c["special_tokens"]);
      const std::string rendered = chat.render(inputs_of(c));
      if (c.contains("error")) {
        ADD_FAILURE() << name << ": transformers raised " << c["error"] << ", uberlm rendered:\n" << rendered;
      } else {
        EXPECT_EQ(rendered, c["expected"].get<std::string>()) << name;
      }
    } catch (const TemplateError& error) {
      if (!c.contains("error")) {
        ADD_FAILURE() << name << ": uberlm raised '" << error.what() << "', transformers rendered:\n" << c["expected"];
        continue;
      }
      // A template's own raise_exception message reaches the user unchanged.
      const std::string oracle = c["error"].get<std::string>();
      const std::string prefix = "TemplateError: ";
      if (oracle.rfind(prefix, 0) == 0) {
        EXPECT_NE(std::string(error.what()).find(oracle.substr(prefix.size())), std::string::npos)
            << name << ": " << error.what();
      }
    }
  }
  return checked;
}

TEST(ChatTemplate, ModelTemplatesRenderAsTransformersRendersThem) {
  EXPECT_GE(check_suite("models"), 4 * 13);
}

TEST(ChatTemplate, JinjaFeaturesBehaveAsJinja2) { EXPECT_GE(check_suite("features"), 30); }

TEST(ChatTemplate, TemplateFilesAreTheOnesTheOracleRendered) {
  // The fixture is remade when tests/data/chat_templates changes (make_fixtures.py digests that folder);
  // a template edited without remaking it would compare against stale text.
  for (const char* name : {"qwen3_5.jinja", "qwen3.jinja", "llama3_2.jinja", "smollm2.jinja"}) {
    EXPECT_TRUE(fs::exists(templates_dir() / name)) << name;
  }
}

TEST(ChatTemplate, SyntaxErrorsNameTheLine) {
  expect_error_containing([] { ChatTemplate("ok\n{% if x %}\nno end", "t"); }, {"line 2", "endif"});
  expect_error_containing([] { ChatTemplate("{{ x + }}", "t"); }, {"line 1", "expected a value"});
  expect_error_containing([] { ChatTemplate("\n\n{% include 'x' %}", "t"); }, {"line 3", "include"});
  expect_error_containing([] { ChatTemplate("{{ 'open }}", "t"); }, {"line 1"});
  expect_error_containing([] { ChatTemplate("{% for a in b %}{% endif %}", "t"); }, {"endif"});
  expect_error_containing([] { ChatTemplate("{{ a < b < c }}", "t"); }, {"chained"});
  expect_error_containing([] { ChatTemplate("{{ " + std::string(100, '(') + "1" + std::string(100, ')') + " }}", "t"); },
                          {"nested deeper than"});
  std::string nots;
  for (int i = 0; i < 1000; ++i) nots += "not ";
  expect_error_containing([&] { ChatTemplate("{{ " + nots + "x }}", "t"); }, {"nested deeper than"});
  std::string deep_blocks;
  for (int i = 0; i < 100; ++i) deep_blocks += "{% if true %}";
  expect_error_containing([&] { ChatTemplate(deep_blocks, "t"); }, {"nested deeper than"});
}

TEST(ChatTemplate, RenderErrorsNameTheLine) {
  const ChatTemplate chat("\n{{ messages|frobnicate }}", "t");
  expect_error_containing([&] { chat.render({}); }, {"line 2", "frobnicate"});
  const ChatTemplate deep("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "t");
  expect_error_containing([&] { deep.render({}); }, {"recurses"});
  // Python's integers are unbounded; here a result beyond 64 bits is an error, never a wrong number.
  for (const char* overflow : {"{{ 2 ** 63 }}", "{{ 9223372036854775807 + 1 }}", "{{ -(-9223372036854775807 - 1) }}",
                               "{{ 4294967296 * 4294967296 }}", "{{ (-9223372036854775807 - 1) // -1 }}"}) {
    expect_error_containing([&] { ChatTemplate(overflow, "t").render({}); }, {"integer overflow"});
  }
  expect_error_containing([] { ChatTemplate("{{ 99999999999999999999 }}", "t"); }, {"does not fit in 64 bits"});
  expect_error_containing([] { ChatTemplate("{{ 'ab' * 100000000 }}", "t").render({}); }, {"repetition"});
}

TEST(ChatTemplate, ChatMlWritesEveryTurnAndTheGenerationPrompt) {
  ChatTemplateInputs inputs;
  inputs.messages = JsonValue::parse(R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello"}, {"role": "tool", "content": "{}"}])");
  const ChatTemplate chatml = ChatTemplate::chatml();
  EXPECT_EQ(chatml.render(inputs),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>tool\n{}<|im_end|>\n<|im_start|>assistant\n");
  inputs.add_generation_prompt = false;
  inputs.messages = JsonValue::parse(R"([{"role": "tool", "content": "{}"}])");
  EXPECT_EQ(chatml.render(inputs), "<|im_start|>tool\n{}<|im_end|>\n");
  EXPECT_FALSE(chatml.writes_reasoning());
  EXPECT_FALSE(chatml.renders_tools());
  EXPECT_FALSE(chatml.renders_tool_calls());
}

class ChatTemplateFolder : public ::testing::Test {
 protected:
  void SetUp() override {
    folder_ = process_temp_path("uberlm_chat_template");
    fs::remove_all(folder_);
    fs::create_directories(folder_);
  }
  void TearDown() override { fs::remove_all(folder_); }
  void write(const std::string& name, const std::string& text) { std::ofstream(folder_ / name, std::ios::binary) << text; }
  std::string render_user(const ChatTemplate& chat) {
    ChatTemplateInputs inputs;
    inputs.messages = JsonValue::parse(R"([{"role": "user", "content": "hi"}])");
    return chat.render(inputs);
  }
  fs::path folder_;
};

TEST_F(ChatTemplateFolder, WithoutATemplateIsChatMl) {
  EXPECT_EQ(ChatTemplate::load(folder_).origin(), "ChatML");
  write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  EXPECT_EQ(render_user(ChatTemplate::load(folder_)), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

TEST_F(ChatTemplateFolder, ReadsTokenizerConfigWithItsSpecialTokens) {
  write("tokenizer_config.json",
        R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "pad_token": null,
            "chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}{{ pad_token is defined }}"})");
  const ChatTemplate chat = ChatTemplate::load(folder_);
  EXPECT_EQ(render_user(chat), "<s>hi</s>False");
  EXPECT_NE(chat.origin().find("tokenizer_config.json"), std::string::npos);
}

TEST_F(ChatTemplateFolder, ChatTemplateJinjaWinsOverTokenizerConfigAndAFileOverridesBoth) {
  write("tokenizer_config.json", R"({"chat_template": "config"})");
  write("chat_template.jinja", "jinja file\n");
  EXPECT_EQ(render_user(ChatTemplate::load(folder_)), "jinja file");
  write("override.jinja", "{{ messages[0].content }} from the override");
  EXPECT_EQ(render_user(ChatTemplate::load(folder_, folder_ / "override.jinja")), "hi from the override");
  expect_error_containing([&] { ChatTemplate::load(folder_, folder_ / "absent.jinja"); }, {"absent.jinja"});
}

TEST_F(ChatTemplateFolder, NamedTemplatesUseDefaultAndToolUseWhenToolsAreGiven) {
  write("tokenizer_config.json", R"({"chat_template": [{"name": "default", "template": "plain"},
                                                       {"name": "tool_use", "template": "{{ tools|length }} tools"}]})");
  const ChatTemplate chat = ChatTemplate::load(folder_);
  EXPECT_TRUE(chat.renders_tools());
  ChatTemplateInputs inputs;
  EXPECT_EQ(chat.render(inputs), "plain");
  inputs.tools = JsonValue::parse(R"([{"type": "function", "function": {"name": "f"}}])");
  EXPECT_EQ(chat.render(inputs), "1 tools");
  write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "x"}]})");
  expect_error_containing([&] { ChatTemplate::load(folder_); }, {"tokenizer_config.json", "default"});
}

TEST_F(ChatTemplateFolder, BadTemplatesAndConfigsAreErrorsNamingTheFile) {
  write("tokenizer_config.json", "{not json");
  expect_error_containing([&] { ChatTemplate::load(folder_); }, {"tokenizer_config.json", "JSON"});
  write("tokenizer_config.json", R"({"chat_template": 5})");
  expect_error_containing([&] { ChatTemplate::load(folder_); }, {"tokenizer_config.json", "chat_template"});
  write("tokenizer_config.json", "{}");
  write("chat_template.jinja", "{% if %}");
  expect_error_containing([&] { ChatTemplate::load(folder_); }, {"line 1"});
}

TEST(ChatTemplate, ReasoningFieldsReachTemplatesUnderEveryName) {
  // As transformers: reasoning under `reasoning` or `thinking` is also given as reasoning_content, and as thinking.
  const ChatTemplate chat("{% for m in messages %}{{ m.reasoning_content }}/{{ m.thinking }}/{{ m|tojson }};{% endfor %}", "t");
  ChatTemplateInputs inputs;
  inputs.messages = JsonValue::parse(R"([{"role": "assistant", "content": "a", "reasoning": "r"},
                                          {"role": "assistant", "content": "b"}])");
  EXPECT_EQ(chat.render(inputs),
            R"(r/r/{"thinking": "r", "role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "r"};)"
            R"(//{"role": "assistant", "content": "b"};)");
}

TEST(ChatTemplate, QwenTemplatesWriteReasoningAndRenderTools) {
  for (const char* name : {"qwen3_5.jinja", "qwen3.jinja"}) {
    const ChatTemplate chat(read_file(templates_dir() / name), name);
    EXPECT_TRUE(chat.writes_reasoning()) << name;
    EXPECT_TRUE(chat.renders_tools()) << name;
    EXPECT_TRUE(chat.renders_tool_calls()) << name;
  }
  EXPECT_FALSE(ChatTemplate(read_file(templates_dir() / "smollm2.jinja"), "smollm2").renders_tools());
}

}  // namespace
}  // namespace uberlm
