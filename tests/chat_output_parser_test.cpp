// Reading chat replies (server/chat_output_parser.h): <think> reasoning, Qwen3.5's XML tool calls and the
// JSON ones of Qwen3/Hermes, malformed calls kept as text; and the same result however the reply is cut
// into streamed pieces (whole, one byte at a time, or in chunks that split every marker).
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/chat_output_parser.h"

namespace uberlm {
namespace {

const JsonValue kTools = JsonValue::parse(R"([
  {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
    "where": {"type": "object"}, "note": {"type": ["string", "null"]}, "zip": {"type": "string"}}}}},
  {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
])");

ChatOutputOptions options(bool reasoning, bool starts_in_reasoning, bool tools) {
  ChatOutputOptions out;
  out.reasoning = reasoning;
  out.starts_in_reasoning = starts_in_reasoning;
  if (tools) out.tools = kTools;
  return out;
}

// The whole reply, fed in pieces of `piece` bytes (0: at once), then finished.
ChatOutputDelta parse_in_pieces(const ChatOutputOptions& opts, const std::string& reply, size_t piece) {
  ChatOutputParser parser(opts);
  ChatOutputDelta all;
  auto add = [&](ChatOutputDelta delta) {
    all.reasoning += delta.reasoning;
    all.content += delta.content;
    for (auto& call : delta.tool_calls) all.tool_calls.push_back(call);
  };
  for (size_t at = 0; at < reply.size(); at += piece == 0 ? reply.size() : piece) {
    add(parser.feed(reply.substr(at, piece == 0 ? reply.size() : piece)));
  }
  add(parser.finish());
  return all;
}

// Parses the reply whole, byte by byte, and in pieces of 2, 3, 5 and 7 bytes; all must agree.
ChatOutputDelta parse(const ChatOutputOptions& opts, const std::string& reply) {
  const ChatOutputDelta whole = parse_in_pieces(opts, reply, 0);
  for (size_t piece : {1, 2, 3, 5, 7}) {
    const ChatOutputDelta split = parse_in_pieces(opts, reply, piece);
    EXPECT_EQ(split.reasoning, whole.reasoning) << "pieces of " << piece << ": " << reply;
    EXPECT_EQ(split.content, whole.content) << "pieces of " << piece << ": " << reply;
    EXPECT_EQ(split.tool_calls.size(), whole.tool_calls.size()) << "pieces of " << piece << ": " << reply;
    for (size_t i = 0; i < std::min(split.tool_calls.size(), whole.tool_calls.size()); ++i) {
      EXPECT_EQ(split.tool_calls[i].name, whole.tool_calls[i].name);
      EXPECT_EQ(split.tool_calls[i].arguments, whole.tool_calls[i].arguments);
    }
  }
  return whole;
}

TEST(ToolCallParser, ReadsQwenXmlCallsWithParameterTypesFromTheSchema) {
  const auto call = parse_tool_call(
      "\n<function=get_weather>\n<parameter=city>\nNew York\n</parameter>\n<parameter=days>\n3\n</parameter>\n"
      "<parameter=metric>\ntrue\n</parameter>\n<parameter=where>\n{\"lat\": 1.5}\n</parameter>\n"
      "<parameter=zip>\n10001\n</parameter>\n<parameter=note>\nline one\nline two\n</parameter>\n"
      "<parameter=extra>\n42\n</parameter>\n</function>\n",
      kTools);
  ASSERT_TRUE(call);
  EXPECT_EQ(call->name, "get_weather");
  // zip stays a string (its schema says so), extra too (no schema); days, metric and where are JSON.
  EXPECT_EQ(call->arguments,
            R"({"city":"New York","days":3,"metric":true,"where":{"lat":1.5},"zip":"10001","note":"line one\nline two","extra":"42"})");
}

TEST(ToolCallParser, SchemaTypeNotStringButValueNotJsonStaysText) {
  const auto call = parse_tool_call("<function=get_weather><parameter=days>three</parameter></function>", kTools);
  ASSERT_TRUE(call);
  EXPECT_EQ(call->arguments, R"({"days":"three"})");
  const auto untyped = parse_tool_call("<function=get_weather><parameter=days>3</parameter></function>", JsonValue());
  ASSERT_TRUE(untyped);
  EXPECT_EQ(untyped->arguments, R"({"days":"3"})");
  const auto no_arguments = parse_tool_call("<function=search>\n</function>", kTools);
  ASSERT_TRUE(no_arguments);
  EXPECT_EQ(no_arguments->arguments, "{}");
}

TEST(ToolCallParser, ReadsJsonCalls) {
  auto call = parse_tool_call("\n{\"name\": \"search\", \"arguments\": {\"query\": \"é \\\"x\\\"\", \"n\": 2}}\n", kTools);
  ASSERT_TRUE(call);
  EXPECT_EQ(call->name, "search");
  EXPECT_EQ(call->arguments, R"({"query":"é \"x\"","n":2})");
  call = parse_tool_call(R"({"name": "search", "arguments": "{\"query\": \"q\"}"})", kTools);
  ASSERT_TRUE(call);
  EXPECT_EQ(call->arguments, R"({"query":"q"})");
  call = parse_tool_call(R"({"name": "search", "parameters": {"query": "q"}})", kTools);  // Llama 3's key
  ASSERT_TRUE(call);
  EXPECT_EQ(call->arguments, R"({"query":"q"})");
  call = parse_tool_call(R"({"name": "search"})", kTools);
  ASSERT_TRUE(call);
  EXPECT_EQ(call->arguments, "{}");
}

TEST(ToolCallParser, InvalidUtf8InArgumentsBecomesReplacementCharacters) {
  const auto call = parse_tool_call("<function=search><parameter=query>a\xC2</parameter></function>", kTools);
  ASSERT_TRUE(call);
  EXPECT_EQ(call->arguments, "{\"query\":\"a\xEF\xBF\xBD\"}");
}

TEST(ToolCallParser, MalformedCallsAreRejected) {
  for (const char* block : {
           "",
           "just text",
           "<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",             // no </function>
           "<function=get_weather>\n<parameter=city>\nParis\n</function>",                // no </parameter>
           "<function=get_weather>\nchatter<parameter=city>\nParis\n</parameter>\n</function>",
           "<function=get_weather>\n</function>\ntrailing",
           "<function=>\n</function>",
           "<function=get_weather",
           "<function=get_weather>\n<parameter=>\nx\n</parameter>\n</function>",
           "{\"name\": \"search\", \"arguments\": [1]}",
           "{\"name\": \"\", \"arguments\": {}}",
           "{\"arguments\": {}}",
           "{\"name\": \"search\", \"arguments\": \"not json\"}",
           "{\"name\": \"search\", \"arguments\": {} trailing",
       }) {
    EXPECT_FALSE(parse_tool_call(block, kTools)) << block;
  }
}

TEST(ChatOutputParser, FindsWhetherThePromptOpensReasoning) {
  EXPECT_TRUE(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(prompt_opens_reasoning("<|im_start|>assistant\n"));
  EXPECT_TRUE(prompt_opens_reasoning("<think>a</think> ... <think>\n"));
}

TEST(ChatOutputParser, SplitsReasoningWhenThePromptOpenedIt) {
  const auto out = parse(options(true, true, false), "\nThe user asks 2+2.\nIt is 4.\n\n</think>\n\nThe answer is 4.\n");
  EXPECT_EQ(out.reasoning, "The user asks 2+2.\nIt is 4.");
  EXPECT_EQ(out.content, "The answer is 4.\n");
  EXPECT_TRUE(out.tool_calls.empty());
}

TEST(ChatOutputParser, SplitsAThinkBlockTheReplyOpens) {
  const auto out = parse(options(true, false, false), "<think>\nhmm\n</think>\n\nHi there");
  EXPECT_EQ(out.reasoning, "hmm");
  EXPECT_EQ(out.content, "Hi there");
  // Only at the start: a <think> later on is text.
  const auto later = parse(options(true, false, false), "Hi <think>x</think>");
  EXPECT_EQ(later.reasoning, "");
  EXPECT_EQ(later.content, "Hi <think>x</think>");
  const auto almost = parse(options(true, false, false), "<thin");
  EXPECT_EQ(almost.content, "<thin");
}

TEST(ChatOutputParser, ReasoningNeverClosedIsAllReasoning) {
  const auto out = parse(options(true, true, false), "step one\n\nstep two\n\n");
  EXPECT_EQ(out.reasoning, "step one\n\nstep two");
  EXPECT_EQ(out.content, "");
}

TEST(ChatOutputParser, WithoutReasoningEverythingIsContent) {
  const std::string reply = "<think>\nnot split\n</think>\n\ntext";
  const auto out = parse(options(false, false, false), reply);
  EXPECT_EQ(out.reasoning, "");
  EXPECT_EQ(out.content, reply);
}

TEST(ChatOutputParser, ReadsToolCallsAfterReasoningAndContent) {
  const auto out = parse(options(true, true, true),
                         "I need the weather.\n</think>\n\nLet me check.\n\n<tool_call>\n<function=get_weather>\n"
                         "<parameter=city>\nParis\n</parameter>\n<parameter=days>\n2\n</parameter>\n</function>\n</tool_call>\n"
                         "<tool_call>\n{\"name\": \"search\", \"arguments\": {\"query\": \"Rome\"}}\n</tool_call>\n");
  EXPECT_EQ(out.reasoning, "I need the weather.");
  EXPECT_EQ(out.content, "Let me check.\n\n");
  ASSERT_EQ(out.tool_calls.size(), 2u);
  EXPECT_EQ(out.tool_calls[0].name, "get_weather");
  EXPECT_EQ(out.tool_calls[0].arguments, R"({"city":"Paris","days":2})");
  EXPECT_EQ(out.tool_calls[1].name, "search");
  EXPECT_EQ(out.tool_calls[1].arguments, R"({"query":"Rome"})");
}

TEST(ChatOutputParser, AToolCallEndsReasoningThatWasNotClosed) {
  const auto out = parse(options(true, true, true),
                         "Calling the tool.\n<tool_call>\n<function=search>\n<parameter=query>\nx\n</parameter>\n</function>\n</tool_call>");
  EXPECT_EQ(out.reasoning, "Calling the tool.");
  EXPECT_EQ(out.content, "");
  ASSERT_EQ(out.tool_calls.size(), 1u);
  EXPECT_EQ(out.tool_calls[0].arguments, R"({"query":"x"})");
  // Without tools in the request the text is reasoning like any other.
  const auto no_tools = parse(options(true, true, false), "a <tool_call>b</tool_call>");
  EXPECT_EQ(no_tools.reasoning, "a <tool_call>b</tool_call>");
}

TEST(ChatOutputParser, MalformedToolCallsComeBackAsContent) {
  const std::string malformed = "Sure. <tool_call>\n<function=get_weather>\nno closing tags</tool_call> after";
  auto out = parse(options(false, false, true), malformed);
  EXPECT_EQ(out.content, malformed);
  EXPECT_TRUE(out.tool_calls.empty());
  const std::string unclosed = "text <tool_call>\n{\"name\": \"search\", \"argu";
  out = parse(options(false, false, true), unclosed);
  EXPECT_EQ(out.content, unclosed);
  EXPECT_TRUE(out.tool_calls.empty());
  // A good call after a bad one still counts.
  out = parse(options(false, false, true),
              "<tool_call>oops</tool_call><tool_call>{\"name\": \"search\", \"arguments\": {}}</tool_call>");
  EXPECT_EQ(out.content, "<tool_call>oops</tool_call>");
  ASSERT_EQ(out.tool_calls.size(), 1u);
}

TEST(ChatOutputParser, ToolCallTextWithoutToolsIsContent) {
  const std::string reply = "<tool_call>\n{\"name\": \"search\", \"arguments\": {}}\n</tool_call>";
  const auto out = parse(options(false, false, false), reply);
  EXPECT_EQ(out.content, reply);
  EXPECT_TRUE(out.tool_calls.empty());
}

TEST(ChatOutputParser, HoldsBackOnlyWhatMayStartAMarker) {
  ChatOutputParser parser(options(true, true, true));
  EXPECT_EQ(parser.feed("abc</th").reasoning, "abc");
  const ChatOutputDelta closed = parser.feed("ink>x<tool");
  EXPECT_EQ(closed.reasoning, "");
  EXPECT_EQ(closed.content, "x");
  EXPECT_EQ(parser.feed("ing").content, "<tooling");
  EXPECT_EQ(parser.finish().content, "");
}

}  // namespace
}  // namespace uberlm
