#pragma once
// A chat reply's text -> what the OpenAI API returns: reasoning (<think> ... </think>), content, and tool
// calls, as the text streams in. Tool calls come in Qwen3.5's XML form
//   <tool_call>\n<function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n</function>\n</tool_call>
// or the JSON form of Qwen3 and Hermes: <tool_call>\n{"name": NAME, "arguments": {...}}\n</tool_call>.
// A tool call block that parses as neither is returned as content, text unchanged.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/python_format.h"

namespace uberlm {

struct ParsedToolCall {
  std::string name;
  std::string arguments;  // a JSON object's text, as OpenAI's function.arguments
};

// The text between <tool_call> and </tool_call>; nullopt when it is malformed. tools (the request's)
// give the XML form's parameter types: a parameter whose schema type is not "string" is read as JSON
// when it parses as JSON (42, true, {"a": 1}), any other stays a string.
std::optional<ParsedToolCall> parse_tool_call(std::string_view block, const JsonValue& tools);

// True when the prompt ends inside an open <think> block (Qwen3.5's generation prompt "<think>\n"):
// the reply then starts with reasoning.
bool prompt_opens_reasoning(std::string_view prompt);

struct ChatOutputOptions {
  bool reasoning = false;            // split out <think> blocks (the template writes them)
  bool starts_in_reasoning = false;  // prompt_opens_reasoning(prompt)
  JsonValue tools;                   // the request's tools; null: tool-call text stays content
};

struct ChatOutputDelta {
  std::string reasoning;
  std::string content;
  std::vector<ParsedToolCall> tool_calls;
};

// Feed the reply's text piece by piece; each call returns what became certain. Text that may be the
// start of a marker (a reply ending in "</th") is held until the next piece or finish(). Reasoning is
// returned without its leading and trailing newlines, content without the blank space that follows a
// </think> or a tool call (as the templates write them back).
class ChatOutputParser {
 public:
  explicit ChatOutputParser(ChatOutputOptions options);
  ChatOutputDelta feed(std::string_view text);
  // The end of the reply: releases held text; an unclosed <tool_call> is returned as content.
  ChatOutputDelta finish();

 private:
  enum class Mode { Start, Reasoning, Content, ToolCall };
  ChatOutputDelta drain(bool final);
  bool step(ChatOutputDelta& out, bool final);
  bool step_reasoning(ChatOutputDelta& out, bool final);
  bool step_content(ChatOutputDelta& out, bool final);
  bool step_tool_call(ChatOutputDelta& out, bool final);
  void add_reasoning(ChatOutputDelta& out, std::string_view text);

  ChatOutputOptions options_;
  bool parse_tools_;
  Mode mode_;
  std::string pending_;
  bool reasoning_started_ = false;
  size_t reasoning_newlines_ = 0;  // newlines held: dropped if </think> follows them
  bool skip_space_ = false;
};

}  // namespace uberlm
