#include "server/request_parser.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>

#include <nlohmann/json.hpp>

namespace uberlm {

// Ordered: a tool schema reaches the chat template with its keys in the order the client sent them.
using json = nlohmann::ordered_json;

void bad_request(const std::string& param, const std::string& message) {
  throw ApiError(400, "invalid_request_error", message, param);
}

namespace {

constexpr size_t kMaxStopStrings = 16;

// Every field an endpoint implements; any other is refused by name rather than ignored.
constexpr std::string_view kSharedFields[] = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "logit_bias", "seed", "n", "stop", "stream", "stream_options", "user", "logprobs"};
constexpr std::string_view kCompletionFields[] = {"prompt", "echo"};
constexpr std::string_view kChatFields[] = {"messages",    "max_completion_tokens", "top_logprobs",
                                           "tools",       "tool_choice",           "parallel_tool_calls",
                                           "add_generation_prompt", "chat_template_kwargs"};
constexpr int64_t kMaxCompletionLogprobs = 5;  // OpenAI's limits
constexpr int64_t kMaxChatTopLogprobs = 20;

// OpenAI fields this server does not implement (on /v1/completions: tools, which chat implements),
// accepted only at the value that asks for nothing (null, or the value given here).
struct NeutralValue {
  std::string_view field;
  const char* value;  // JSON text
};
constexpr NeutralValue kNeutralValues[] = {{"best_of", "1"},
                                           {"suffix", "\"\""},
                                           {"tools", "[]"},
                                           {"tool_choice", "\"none\""},
                                           {"response_format", R"({"type": "text"})"}};

template <size_t N>
bool listed(const std::string_view (&fields)[N], std::string_view key) {
  return std::find(std::begin(fields), std::end(fields), key) != std::end(fields);
}

void refuse_unimplemented_fields(const json& root, bool chat) {
  for (const auto& item : root.items()) {
    const std::string& key = item.key();  // a named variable: clang 14 cannot capture a structured binding
    const json& value = item.value();
    if (listed(kSharedFields, key) || (chat ? listed(kChatFields, key) : listed(kCompletionFields, key))) continue;
    auto neutral = std::find_if(std::begin(kNeutralValues), std::end(kNeutralValues),
                                [&](const NeutralValue& n) { return n.field == key; });
    if (neutral == std::end(kNeutralValues)) {
      bad_request(key,
                  fmt::format("'{}' is not a parameter of {}", key, chat ? "/v1/chat/completions" : "/v1/completions"));
    }
    if (!value.is_null() && value != json::parse(neutral->value)) {
      bad_request(key, fmt::format("'{}' is not supported (only {} is accepted)", key, neutral->value));
    }
  }
}

json parse_object(std::string_view body) {
  json root;
  try {
    root = json::parse(body);
  } catch (const json::exception& error) {
    bad_request("", fmt::format("the request body is not valid JSON: {}", error.what()));
  }
  if (!root.is_object()) bad_request("", "the request body must be a JSON object");
  return root;
}

// A present, non-null field.
const json* field(const json& root, const char* key) {
  auto it = root.find(key);
  return it == root.end() || it->is_null() ? nullptr : &*it;
}

// An integer beyond 64 bits reaches us as a double: it is out of range, not a non-integer.
void refuse_beyond_64_bits(const json& value, const char* key, const std::string& range) {
  if (value.is_number_float() && std::fabs(value.get<double>()) >= 0x1p63) {
    bad_request(key, fmt::format("'{}' is out of range: it must be {}, got {}", key, range, value.dump()));
  }
}

std::optional<int64_t> optional_int(const json& root, const char* key, int64_t min, int64_t max) {
  const json* value = field(root, key);
  if (value == nullptr) return std::nullopt;
  refuse_beyond_64_bits(*value, key, fmt::format("between {} and {}", min, max));
  if (!value->is_number_integer()) bad_request(key, fmt::format("'{}' must be an integer", key));
  // nlohmann stores every non-negative integer as unsigned: compare in the type it holds.
  const bool in_range = value->is_number_unsigned()
                            ? value->get<uint64_t>() <= static_cast<uint64_t>(max) &&
                                  (min <= 0 || value->get<uint64_t>() >= static_cast<uint64_t>(min))
                            : value->get<int64_t>() >= min && value->get<int64_t>() <= max;
  if (!in_range) {
    bad_request(key, fmt::format("'{}' must be between {} and {}, got {}", key, min, max, value->dump()));
  }
  return value->get<int64_t>();
}

float optional_float(const json& root, const char* key, float fallback, float min, float max, bool min_exclusive) {
  const json* value = field(root, key);
  if (value == nullptr) return fallback;
  if (!value->is_number()) bad_request(key, fmt::format("'{}' must be a number", key));
  const double number = value->get<double>();
  const bool below = min_exclusive ? !(number > min) : !(number >= min);
  if (!std::isfinite(number) || below || number > max) {
    bad_request(key, fmt::format("'{}' must be in {}{}, {}], got {}", key, min_exclusive ? "(" : "[", min, max,
                                 value->dump()));
  }
  return static_cast<float>(number);
}

// Any 64-bit integer, signed or unsigned: either names a generator state.
std::optional<uint64_t> optional_seed(const json& root) {
  const json* value = field(root, "seed");
  if (value == nullptr) return std::nullopt;
  refuse_beyond_64_bits(*value, "seed", "a 64-bit integer");
  if (!value->is_number_integer()) bad_request("seed", "'seed' must be an integer");
  return value->is_number_unsigned() ? value->get<uint64_t>() : static_cast<uint64_t>(value->get<int64_t>());
}

// {"<token id>": bias, ...}: canonical decimal ids (so no two keys name one token), biases in [-100, 100].
std::vector<std::pair<int32_t, float>> parse_logit_bias(const json& root) {
  std::vector<std::pair<int32_t, float>> biases;
  const json* value = field(root, "logit_bias");
  if (value == nullptr) return biases;
  if (!value->is_object()) bad_request("logit_bias", "'logit_bias' must be an object of token id -> bias");
  for (const auto& [key, bias] : value->items()) {
    const bool digits = !key.empty() && key.size() <= 10 &&
                        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    const bool canonical =
        digits && (key == "0" || key[0] != '0') && std::stoll(key) <= std::numeric_limits<int32_t>::max();
    if (!canonical) {
      bad_request("logit_bias", fmt::format("'logit_bias' keys must be token ids (decimal integers), got '{}'", key));
    }
    if (!bias.is_number() || !(bias.get<double>() >= -100.0 && bias.get<double>() <= 100.0)) {
      bad_request("logit_bias", fmt::format("'logit_bias' of token {} must be a number in [-100, 100], got {}", key,
                                            bias.is_structured() ? bias.type_name() : bias.dump()));
    }
    biases.emplace_back(static_cast<int32_t>(std::stol(key)), bias.get<float>());
  }
  return biases;
}

bool optional_bool(const json& root, const char* key) {
  const json* value = field(root, key);
  if (value == nullptr) return false;
  if (!value->is_boolean()) bad_request(key, fmt::format("'{}' must be a boolean", key));
  return value->get<bool>();
}

std::string required_model(const json& root, const std::string& served_model) {
  const json* value = field(root, "model");
  if (value == nullptr) bad_request("model", "'model' is required");
  if (!value->is_string()) bad_request("model", "'model' must be a string");
  std::string model = value->get<std::string>();
  if (model != served_model) {
    throw ApiError(400, "invalid_request_error",
                   fmt::format("the model '{}' does not exist; this server serves '{}'", model, served_model), "model");
  }
  return model;
}

// /v1/completions: "logprobs": N, the N most likely tokens beside each generated one (false: none).
int completion_top_logprobs(const json& root) {
  const json* logprobs = field(root, "logprobs");
  if (logprobs != nullptr && logprobs->is_boolean() && !logprobs->get<bool>()) return -1;
  return static_cast<int>(optional_int(root, "logprobs", 0, kMaxCompletionLogprobs).value_or(-1));
}

// /v1/chat/completions: "logprobs": true, with "top_logprobs": N alternatives (default 0).
int chat_top_logprobs(const json& root) {
  const bool logprobs = optional_bool(root, "logprobs");
  const std::optional<int64_t> top = optional_int(root, "top_logprobs", 0, kMaxChatTopLogprobs);
  if (top && !logprobs) bad_request("top_logprobs", "'top_logprobs' needs 'logprobs': true");
  return logprobs ? static_cast<int>(top.value_or(0)) : -1;
}

GenerationOptions parse_options(const json& root, int64_t max_model_len, bool chat) {
  GenerationOptions options;
  options.max_tokens = optional_int(root, "max_tokens", 1, max_model_len);
  if (chat && !options.max_tokens) options.max_tokens = optional_int(root, "max_completion_tokens", 1, max_model_len);
  options.temperature = optional_float(root, "temperature", 1.0f, 0.0f, 2.0f, false);
  options.top_p = optional_float(root, "top_p", 1.0f, 0.0f, 1.0f, true);
  const int64_t top_k = optional_int(root, "top_k", -1, std::numeric_limits<int32_t>::max()).value_or(0);
  options.top_k = top_k < 0 ? 0 : static_cast<int>(top_k);
  options.min_p = optional_float(root, "min_p", 0.0f, 0.0f, 1.0f, false);
  options.presence_penalty = optional_float(root, "presence_penalty", 0.0f, -2.0f, 2.0f, false);
  options.frequency_penalty = optional_float(root, "frequency_penalty", 0.0f, -2.0f, 2.0f, false);
  options.repetition_penalty =
      optional_float(root, "repetition_penalty", 1.0f, 0.0f, std::numeric_limits<float>::max(), true);
  options.logit_bias = parse_logit_bias(root);
  options.seed = optional_seed(root);
  if (auto n = optional_int(root, "n", 1, std::numeric_limits<int32_t>::max()); n && *n != 1) {
    bad_request("n", "only n = 1 is supported");
  }
  if (const json* stop = field(root, "stop")) {
    if (stop->is_string()) {
      options.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > kMaxStopStrings) bad_request("stop", fmt::format("at most {} stop strings", kMaxStopStrings));
      for (const json& item : *stop) {
        if (!item.is_string()) bad_request("stop", "'stop' must be a string or an array of strings");
        options.stop.push_back(item.get<std::string>());
      }
    } else {
      bad_request("stop", "'stop' must be a string or an array of strings");
    }
    for (const std::string& s : options.stop) {
      if (s.empty()) bad_request("stop", "stop strings must not be empty");
    }
  }
  options.stream = optional_bool(root, "stream");
  if (const json* stream_options = field(root, "stream_options")) {
    if (!stream_options->is_object()) bad_request("stream_options", "'stream_options' must be an object");
    for (const auto& [key, value] : stream_options->items()) {
      if (key != "include_usage") {
        bad_request("stream_options." + key, fmt::format("'stream_options.{}' is not supported", key));
      }
    }
    options.include_usage = optional_bool(*stream_options, "include_usage");
  }
  if (const json* user = field(root, "user"); user != nullptr && !user->is_string()) {
    bad_request("user", "'user' must be a string");
  }
  options.top_logprobs = chat ? chat_top_logprobs(root) : completion_top_logprobs(root);
  return options;
}

std::string message_content(const json& message, size_t index) {
  const std::string param = fmt::format("messages[{}].content", index);
  const json* content = field(message, "content");
  if (content == nullptr) return "";
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) bad_request(param, "content must be a string or an array of text parts");
  std::string text;
  for (const json& part : *content) {
    const json* type = part.is_object() ? field(part, "type") : nullptr;
    const json* part_text = part.is_object() ? field(part, "text") : nullptr;
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text" || part_text == nullptr ||
        !part_text->is_string()) {
      bad_request(param, "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
    }
    text += part_text->get<std::string>();
  }
  return text;
}

std::string required_string(const json& object, const char* key, const std::string& param) {
  const json* value = field(object, key);
  if (value == nullptr || !value->is_string() || value->get_ref<const std::string&>().empty()) {
    bad_request(param, fmt::format("'{}' must be a non-empty string", param));
  }
  return value->get<std::string>();
}

// An assistant message's tool call as the chat template reads it: function.arguments as an object.
json tool_call(const json& call, const std::string& param) {
  if (!call.is_object()) bad_request(param, fmt::format("'{}' must be an object", param));
  const json* function = field(call, "function");
  if (function == nullptr || !function->is_object()) bad_request(param + ".function", "each tool call needs a 'function' object");
  json normalized = {{"type", "function"}};
  if (const json* id = field(call, "id")) {
    if (!id->is_string()) bad_request(param + ".id", fmt::format("'{}.id' must be a string", param));
    normalized = {{"id", *id}, {"type", "function"}};
  }
  json arguments = json::object();
  const std::string arguments_param = param + ".function.arguments";
  if (const json* given = field(*function, "arguments")) {
    arguments = given->is_string() ? json::parse(given->get<std::string>(), nullptr, /*allow_exceptions=*/false) : *given;
    if (!arguments.is_object()) bad_request(arguments_param, fmt::format("'{}' must be a JSON object (or its text)", arguments_param));
  }
  normalized["function"] = {{"name", required_string(*function, "name", param + ".function.name")}, {"arguments", arguments}};
  return normalized;
}

json chat_message(const json& message, size_t index) {
  const std::string param = fmt::format("messages[{}]", index);
  if (!message.is_object()) bad_request(param, "each message must be an object");
  const json* role = field(message, "role");
  if (role == nullptr || !role->is_string()) bad_request(param + ".role", "each message needs a string 'role'");
  const std::string name = role->get<std::string>();
  if (name != "system" && name != "user" && name != "assistant" && name != "tool") {
    bad_request(param + ".role", fmt::format("unknown role '{}' (system, user, assistant or tool)", name));
  }
  json out = {{"role", name}, {"content", message_content(message, index)}};
  for (const char* key : {"name", "tool_call_id", "reasoning_content", "reasoning"}) {
    if (const json* value = field(message, key)) {
      if (!value->is_string()) bad_request(fmt::format("{}.{}", param, key), fmt::format("'{}.{}' must be a string", param, key));
      out[key] = *value;
    }
  }
  if (const json* calls = field(message, "tool_calls")) {
    const std::string calls_param = param + ".tool_calls";
    if (name != "assistant") bad_request(calls_param, "only assistant messages carry tool_calls");
    if (!calls->is_array()) bad_request(calls_param, fmt::format("'{}' must be an array", calls_param));
    json normalized = json::array();
    for (size_t i = 0; i < calls->size(); ++i) normalized.push_back(tool_call((*calls)[i], fmt::format("{}[{}]", calls_param, i)));
    if (!normalized.empty()) out["tool_calls"] = std::move(normalized);
  }
  return out;
}

json tools_of(const json& root) {
  const json* tools = field(root, "tools");
  if (tools == nullptr) return nullptr;
  if (!tools->is_array()) bad_request("tools", "'tools' must be an array");
  for (size_t i = 0; i < tools->size(); ++i) {
    const std::string param = fmt::format("tools[{}]", i);
    const json& tool = (*tools)[i];
    const json* type = tool.is_object() ? field(tool, "type") : nullptr;
    if (type == nullptr || *type != "function") bad_request(param + ".type", "each tool must be {\"type\": \"function\", \"function\": {...}}");
    const json* function = field(tool, "function");
    if (function == nullptr || !function->is_object()) bad_request(param + ".function", fmt::format("'{}.function' must be an object", param));
    required_string(*function, "name", param + ".function.name");
    const json* parameters = field(*function, "parameters");
    if (parameters != nullptr && !parameters->is_object()) {
      bad_request(param + ".function.parameters", fmt::format("'{}.function.parameters' must be a JSON schema object", param));
    }
  }
  return tools->empty() ? json(nullptr) : *tools;
}

ToolChoice tool_choice_of(const json& root) {
  const json* choice = field(root, "tool_choice");
  if (choice == nullptr || *choice == "auto") return ToolChoice::Auto;
  if (*choice == "none") return ToolChoice::None;
  if (*choice == "required" || choice->is_object()) {
    bad_request("tool_choice", "only tool_choice 'auto' and 'none' are supported: forcing a call needs constrained decoding");
  }
  bad_request("tool_choice", "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", ...}");
}

}  // namespace

CompletionRequest parse_completion_request(std::string_view body, const std::string& served_model,
                                           int64_t max_model_len) {
  const json root = parse_object(body);
  refuse_unimplemented_fields(root, false);
  CompletionRequest request;
  request.model = required_model(root, served_model);
  const json* prompt = field(root, "prompt");
  if (prompt == nullptr) bad_request("prompt", "'prompt' is required");
  if (prompt->is_string()) {
    request.prompt_text = prompt->get<std::string>();
  } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    request.prompt_text = (*prompt)[0].get<std::string>();
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number_integer()) {
    for (const json& id : *prompt) {
      if (!id.is_number_integer() || (!id.is_number_unsigned() && id.get<int64_t>() < 0) ||
          (id.is_number_unsigned() && id.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()))) {
        bad_request("prompt", "a token-id prompt must hold non-negative 32-bit integers");
      }
      request.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
  } else {
    bad_request("prompt", "'prompt' must be a string, a one-string array or an array of token ids");
  }
  if (request.prompt_text && request.prompt_text->empty()) bad_request("prompt", "'prompt' must not be empty");
  request.echo = optional_bool(root, "echo");
  request.options = parse_options(root, max_model_len, false);
  // Prompt tokens' logprobs are not computed with their alternatives.
  if (request.echo && request.options.top_logprobs >= 0) bad_request("echo", "'echo' with 'logprobs' is not supported");
  return request;
}

ChatCompletionRequest parse_chat_completion_request(std::string_view body, const std::string& served_model,
                                                    int64_t max_model_len) {
  const json root = parse_object(body);
  refuse_unimplemented_fields(root, true);
  ChatCompletionRequest request;
  request.model = required_model(root, served_model);
  const json* messages = field(root, "messages");
  if (messages == nullptr) bad_request("messages", "'messages' is required");
  if (!messages->is_array()) bad_request("messages", "'messages' must be an array");
  if (messages->empty()) bad_request("messages", "'messages' must not be empty");
  for (size_t i = 0; i < messages->size(); ++i) request.messages.push_back(chat_message((*messages)[i], i));
  request.tools = tools_of(root);
  request.tool_choice = tool_choice_of(root);
  if (const json* parallel = field(root, "parallel_tool_calls")) {
    if (!parallel->is_boolean()) bad_request("parallel_tool_calls", "'parallel_tool_calls' must be a boolean");
    request.parallel_tool_calls = parallel->get<bool>();
  }
  if (const json* add_generation_prompt = field(root, "add_generation_prompt")) {
    if (!add_generation_prompt->is_boolean()) bad_request("add_generation_prompt", "'add_generation_prompt' must be a boolean");
    request.add_generation_prompt = add_generation_prompt->get<bool>();
  }
  if (const json* kwargs = field(root, "chat_template_kwargs")) {
    if (!kwargs->is_object()) bad_request("chat_template_kwargs", "'chat_template_kwargs' must be an object");
    for (const char* reserved : {"messages", "tools", "add_generation_prompt", "documents"}) {
      if (kwargs->contains(reserved)) {
        bad_request("chat_template_kwargs", fmt::format("'chat_template_kwargs' must not set '{}': it is the request's own", reserved));
      }
    }
    request.chat_template_kwargs = *kwargs;
  }
  request.options = parse_options(root, max_model_len, true);
  return request;
}

}  // namespace uberlm
