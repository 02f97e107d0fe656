#include "tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

namespace uberlm {

namespace {

constexpr const char* kChatMl =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

// The tokenizer attributes transformers hands a template (its special_tokens_map).
constexpr const char* kSpecialTokenKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                             "pad_token", "cls_token", "mask_token"};

std::string read_text(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) fail("cannot read the chat template {}", path.string());
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

JsonValue special_tokens_of(const JsonValue& config) {
  JsonValue tokens = JsonValue::object();
  for (const char* key : kSpecialTokenKeys) {
    auto it = config.find(key);
    if (it == config.end()) continue;
    if (it->is_string()) tokens[key] = *it;
    if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) tokens[key] = (*it)["content"];
  }
  return tokens;
}

// transformers shows a message's reasoning to templates as reasoning_content, whichever of the names
// reasoning_content, thinking or reasoning it came under, and as thinking (gpt-oss templates read that).
JsonValue alias_reasoning_fields(const JsonValue& messages) {
  JsonValue aliased = JsonValue::array();
  for (const JsonValue& message : messages) {
    const JsonValue* reasoning = nullptr;
    for (const char* key : {"reasoning_content", "thinking", "reasoning"}) {
      auto it = message.is_object() ? message.find(key) : message.end();
      if (message.is_object() && it != message.end() && !it->is_null()) {
        reasoning = &*it;
        break;
      }
    }
    if (reasoning == nullptr) {
      aliased.push_back(message);
      continue;
    }
    JsonValue renamed = {{"thinking", *reasoning}};
    for (const auto& item : message.items()) renamed[item.key()] = item.value();
    renamed["reasoning_content"] = *reasoning;
    aliased.push_back(std::move(renamed));
  }
  return aliased;
}

}  // namespace

ChatTemplate::ChatTemplate(std::string source, std::string origin, JsonValue special_tokens)
    : template_(source), origin_(std::move(origin)), special_tokens_(std::move(special_tokens)),
      writes_reasoning_(source.find("</think>") != std::string::npos),
      renders_tools_(source.find("tools") != std::string::npos),
      renders_tool_calls_(source.find("tool_calls") != std::string::npos) {}

ChatTemplate ChatTemplate::chatml() { return ChatTemplate(kChatMl, "ChatML"); }

ChatTemplate ChatTemplate::load(const std::filesystem::path& folder, const std::filesystem::path& override_file) {
  JsonValue config = JsonValue::object();
  const std::filesystem::path config_path = folder / "tokenizer_config.json";
  if (std::filesystem::exists(config_path)) {
    try {
      config = JsonValue::parse(read_text(config_path));
    } catch (const JsonValue::exception& error) {
      fail("{}: not valid JSON: {}", config_path.string(), error.what());
    }
  }
  const JsonValue special_tokens = special_tokens_of(config);
  try {
    if (!override_file.empty()) return ChatTemplate(read_text(override_file), override_file.string(), special_tokens);
    if (std::filesystem::exists(folder / "chat_template.jinja")) {
      return ChatTemplate(read_text(folder / "chat_template.jinja"), (folder / "chat_template.jinja").string(), special_tokens);
    }
    auto named = config.find("chat_template");
    if (named != config.end() && named->is_string()) {
      return ChatTemplate(named->get<std::string>(), config_path.string() + " chat_template", special_tokens);
    }
    if (named != config.end() && named->is_array()) {
      std::optional<std::string> default_source, tool_use_source;
      for (const JsonValue& entry : *named) {
        if (!entry.is_object() || !entry.contains("name") || !entry.contains("template") || !entry["template"].is_string()) {
          fail("{}: chat_template entries must be {{\"name\": ..., \"template\": ...}}", config_path.string());
        }
        if (entry["name"] == "default") default_source = entry["template"].get<std::string>();
        if (entry["name"] == "tool_use") tool_use_source = entry["template"].get<std::string>();
      }
      if (!default_source) fail("{}: chat_template lists no template named 'default'", config_path.string());
      ChatTemplate chat(*default_source, config_path.string() + " chat_template 'default'", special_tokens);
      if (tool_use_source) {
        chat.tool_use_template_.emplace(*tool_use_source);
        chat.renders_tools_ = true;
        chat.renders_tool_calls_ = chat.renders_tool_calls_ || tool_use_source->find("tool_calls") != std::string::npos;
      }
      return chat;
    }
    if (named != config.end() && !named->is_null()) fail("{}: chat_template must be a string or a list", config_path.string());
  } catch (const TemplateError& error) {
    fail("{}", error.what());
  }
  spdlog::warn("{}: no chat template (chat_template.jinja, or chat_template in tokenizer_config.json): chats are "
               "rendered as ChatML",
               folder.string());
  return chatml();
}

std::string ChatTemplate::render(const ChatTemplateInputs& inputs) const {
  JsonValue context = special_tokens_;
  for (const auto& item : inputs.kwargs.items()) context[item.key()] = item.value();
  context["messages"] = alias_reasoning_fields(inputs.messages);
  context["tools"] = inputs.tools;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = inputs.add_generation_prompt;
  const bool use_tool_template = tool_use_template_ && !inputs.tools.is_null();
  return (use_tool_template ? *tool_use_template_ : template_).render(context);
}

}  // namespace uberlm
