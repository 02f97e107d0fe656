#include "server/chat_output_parser.h"

#include <algorithm>

namespace uberlm {

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kToolCallOpen = "<tool_call>";
constexpr std::string_view kToolCallClose = "</tool_call>";
constexpr std::string_view kFunctionOpen = "<function=";
constexpr std::string_view kFunctionClose = "</function>";
constexpr std::string_view kParameterOpen = "<parameter=";
constexpr std::string_view kParameterClose = "</parameter>";

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

// Compact JSON text of a call's arguments. Replies are valid UTF-8 (the engine's decoder sees to that);
// should a byte not be, it becomes U+FFFD rather than an exception.
std::string arguments_text(const JsonValue& arguments) {
  return arguments.dump(-1, ' ', false, JsonValue::error_handler_t::replace);
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

// The length of the longest end of `text` that is the beginning of one of the markers.
size_t marker_prefix_at_end(std::string_view text, std::initializer_list<std::string_view> markers) {
  size_t longest = 0;
  for (std::string_view marker : markers) {
    for (size_t length = std::min(text.size(), marker.size() - 1); length > longest; --length) {
      if (text.substr(text.size() - length) == marker.substr(0, length)) {
        longest = length;
        break;
      }
    }
  }
  return longest;
}

// The member `key` of an object, or null.
const JsonValue& member(const JsonValue& object, const char* key) {
  static const JsonValue kNull;
  if (!object.is_object()) return kNull;
  auto it = object.find(key);
  return it == object.end() ? kNull : *it;
}

// The JSON schema type the request's tools give a function's parameter; null when unknown.
JsonValue parameter_type(const JsonValue& tools, const std::string& function, const std::string& parameter) {
  if (!tools.is_array()) return nullptr;
  for (const JsonValue& tool : tools) {
    const JsonValue& spec = member(tool, "function");
    if (member(spec, "name") != function) continue;
    return member(member(member(member(spec, "parameters"), "properties"), parameter.c_str()), "type");
  }
  return nullptr;
}

bool allows_string(const JsonValue& type) {
  if (type.is_string()) return type == "string";
  if (type.is_array()) return std::find(type.begin(), type.end(), JsonValue("string")) != type.end();
  return true;  // no schema: the text as the model wrote it
}

JsonValue parameter_value(std::string_view raw, const JsonValue& type) {
  // The template writes "<parameter=P>\n" VALUE "\n</parameter>": one newline each side is layout.
  if (!raw.empty() && raw.front() == '\n') raw.remove_prefix(1);
  if (!raw.empty() && raw.back() == '\n') raw.remove_suffix(1);
  if (!allows_string(type)) {
    JsonValue parsed = JsonValue::parse(raw, nullptr, /*allow_exceptions=*/false);
    if (!parsed.is_discarded()) return parsed;
  }
  return std::string(raw);
}

std::optional<ParsedToolCall> parse_xml_call(std::string_view text, const JsonValue& tools) {
  text.remove_prefix(kFunctionOpen.size());
  const size_t name_end = text.find('>');
  if (name_end == std::string_view::npos) return std::nullopt;
  const std::string name(trim(text.substr(0, name_end)));
  if (name.empty() || name.find_first_of("<\n") != std::string::npos) return std::nullopt;
  text.remove_prefix(name_end + 1);
  JsonValue arguments = JsonValue::object();
  while (true) {
    text = trim(text);
    if (text.substr(0, kFunctionClose.size()) == kFunctionClose) {
      if (!trim(text.substr(kFunctionClose.size())).empty()) return std::nullopt;
      return ParsedToolCall{name, arguments_text(arguments)};
    }
    if (text.substr(0, kParameterOpen.size()) != kParameterOpen) return std::nullopt;
    text.remove_prefix(kParameterOpen.size());
    const size_t parameter_end = text.find('>');
    const size_t value_end = text.find(kParameterClose);
    if (parameter_end == std::string_view::npos || value_end == std::string_view::npos || value_end < parameter_end) {
      return std::nullopt;
    }
    const std::string parameter(trim(text.substr(0, parameter_end)));
    if (parameter.empty()) return std::nullopt;
    arguments[parameter] = parameter_value(text.substr(parameter_end + 1, value_end - parameter_end - 1),
                                           parameter_type(tools, name, parameter));
    text.remove_prefix(value_end + kParameterClose.size());
  }
}

std::optional<ParsedToolCall> parse_json_call(std::string_view text) {
  const JsonValue call = JsonValue::parse(text, nullptr, /*allow_exceptions=*/false);
  if (call.is_discarded() || !call.is_object() || !call.contains("name") || !call["name"].is_string()) return std::nullopt;
  const std::string name = call["name"].get<std::string>();
  if (name.empty()) return std::nullopt;
  JsonValue arguments = call.contains("arguments") ? call["arguments"] : call.value("parameters", JsonValue::object());
  if (arguments.is_string()) arguments = JsonValue::parse(arguments.get<std::string>(), nullptr, /*allow_exceptions=*/false);
  if (!arguments.is_object()) return std::nullopt;
  return ParsedToolCall{name, arguments_text(arguments)};
}

}  // namespace

std::optional<ParsedToolCall> parse_tool_call(std::string_view block, const JsonValue& tools) {
  const std::string_view text = trim(block);
  if (text.substr(0, kFunctionOpen.size()) == kFunctionOpen) return parse_xml_call(text, tools);
  if (!text.empty() && text.front() == '{') return parse_json_call(text);
  return std::nullopt;
}

bool prompt_opens_reasoning(std::string_view prompt) {
  const size_t open = prompt.rfind(kThinkOpen);
  if (open == std::string_view::npos) return false;
  const size_t close = prompt.rfind(kThinkClose);
  return close == std::string_view::npos || close < open;
}

ChatOutputParser::ChatOutputParser(ChatOutputOptions options)
    : options_(std::move(options)), parse_tools_(options_.tools.is_array()),
      mode_(!options_.reasoning ? Mode::Content : options_.starts_in_reasoning ? Mode::Reasoning : Mode::Start) {}

ChatOutputDelta ChatOutputParser::feed(std::string_view text) {
  pending_ += text;
  return drain(false);
}

ChatOutputDelta ChatOutputParser::finish() { return drain(true); }

ChatOutputDelta ChatOutputParser::drain(bool final) {
  ChatOutputDelta out;
  while (step(out, final)) {
  }
  return out;
}

// Consumes what it can of pending_; true when another step may consume more.
bool ChatOutputParser::step(ChatOutputDelta& out, bool final) {
  switch (mode_) {
    case Mode::Start:  // a reply that opens its own <think> block (Qwen3's templates leave that to the model)
      if (pending_.substr(0, kThinkOpen.size()) == kThinkOpen) {
        pending_.erase(0, kThinkOpen.size());
        mode_ = Mode::Reasoning;
        return true;
      }
      if (!final && kThinkOpen.substr(0, pending_.size()) == pending_) return false;
      mode_ = Mode::Content;
      return true;
    case Mode::Reasoning: return step_reasoning(out, final);
    case Mode::Content: return step_content(out, final);
    case Mode::ToolCall: return step_tool_call(out, final);
  }
  return false;
}

bool ChatOutputParser::step_reasoning(ChatOutputDelta& out, bool final) {
  const size_t close = pending_.find(kThinkClose);
  // A tool call cannot be part of the reasoning: it ends it even where the model forgot </think>.
  const size_t call = parse_tools_ ? pending_.find(kToolCallOpen) : std::string::npos;
  if (close != std::string::npos || call != std::string::npos) {
    const bool closed = close < call;
    const size_t at = closed ? close : call;
    add_reasoning(out, std::string_view(pending_).substr(0, at));
    reasoning_newlines_ = 0;
    pending_.erase(0, at + (closed ? kThinkClose.size() : kToolCallOpen.size()));
    mode_ = closed ? Mode::Content : Mode::ToolCall;
    skip_space_ = closed;
    return true;
  }
  const size_t held = final ? 0 : parse_tools_ ? marker_prefix_at_end(pending_, {kThinkClose, kToolCallOpen})
                                               : marker_prefix_at_end(pending_, {kThinkClose});
  add_reasoning(out, std::string_view(pending_).substr(0, pending_.size() - held));
  pending_.erase(0, pending_.size() - held);
  return false;
}

bool ChatOutputParser::step_content(ChatOutputDelta& out, bool final) {
  if (skip_space_) {
    const size_t text = pending_.find_first_not_of(" \n\t\r");
    pending_.erase(0, text == std::string::npos ? pending_.size() : text);
    if (pending_.empty()) return false;
    skip_space_ = false;
  }
  if (parse_tools_) {
    const size_t call = pending_.find(kToolCallOpen);
    if (call != std::string::npos) {
      out.content += pending_.substr(0, call);
      pending_.erase(0, call + kToolCallOpen.size());
      mode_ = Mode::ToolCall;
      return true;
    }
  }
  const size_t held = final || !parse_tools_ ? 0 : marker_prefix_at_end(pending_, {kToolCallOpen});
  out.content += pending_.substr(0, pending_.size() - held);
  pending_.erase(0, pending_.size() - held);
  return false;
}

bool ChatOutputParser::step_tool_call(ChatOutputDelta& out, bool final) {
  const size_t close = pending_.find(kToolCallClose);
  if (close == std::string::npos) {
    if (final) {  // the reply ended inside the block: it was no tool call
      out.content += std::string(kToolCallOpen) + pending_;
      pending_.clear();
    }
    return false;
  }
  const std::string block = pending_.substr(0, close);
  pending_.erase(0, close + kToolCallClose.size());
  mode_ = Mode::Content;
  if (auto call = parse_tool_call(block, options_.tools)) {
    out.tool_calls.push_back(std::move(*call));
    skip_space_ = true;
  } else {
    out.content += std::string(kToolCallOpen) + block + std::string(kToolCallClose);
  }
  return true;
}

void ChatOutputParser::add_reasoning(ChatOutputDelta& out, std::string_view text) {
  for (const char c : text) {
    if (c == '\n') {
      if (reasoning_started_) ++reasoning_newlines_;
      continue;
    }
    reasoning_started_ = true;
    out.reasoning.append(reasoning_newlines_, '\n');
    reasoning_newlines_ = 0;
    out.reasoning += c;
  }
}

}  // namespace uberlm
