#pragma once
// A model's chat template: the Jinja template its checkpoint ships (chat_template.jinja, or
// tokenizer_config.json's chat_template), rendered with the variables transformers' apply_chat_template
// gives it: messages, tools, documents, add_generation_prompt, the tokenizer's special tokens
// (bos_token, eos_token, ...) and any extra keyword arguments (chat_template_kwargs: enable_thinking).
// A checkpoint without a template gets ChatML, and says so in the log.
#include <filesystem>
#include <optional>
#include <string>

#include "tokenizer/jinja_template.h"
#include "tokenizer/python_format.h"

namespace uberlm {

struct ChatTemplateInputs {
  JsonValue messages = JsonValue::array();  // OpenAI-style message objects: role, content, tool_calls, ...
  JsonValue tools;                          // null, or an array of {"type": "function", "function": {...}}
  bool add_generation_prompt = true;
  JsonValue kwargs = JsonValue::object();   // extra template variables, e.g. {"enable_thinking": false}
};

class ChatTemplate {
 public:
  // source: Jinja text; origin names it in logs and errors; special_tokens: {"bos_token": "<s>", ...}.
  // Throws TemplateError when the source does not parse.
  ChatTemplate(std::string source, std::string origin, JsonValue special_tokens = JsonValue::object());

  // The template of a checkpoint folder: override_file when given (--chat-template), else the folder's
  // chat_template.jinja, else tokenizer_config.json's chat_template (a string, or a list of named
  // templates whose "default" is used, "tool_use" when a request has tools). Special tokens come from
  // tokenizer_config.json. ChatML, logged as a warning, when there is no template.
  static ChatTemplate load(const std::filesystem::path& folder, const std::filesystem::path& override_file = {});
  // "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then "<|im_start|>assistant\n".
  static ChatTemplate chatml();

  // Throws TemplateError (the template's raise_exception, or a conversation it cannot render).
  std::string render(const ChatTemplateInputs& inputs) const;

  const std::string& origin() const { return origin_; }
  // The template writes <think> ... </think> blocks: replies may hold reasoning to split out.
  bool writes_reasoning() const { return writes_reasoning_; }
  // The template's text names `tools` / `tool_calls`: a request's tool schemas, and the calls of earlier
  // assistant turns, reach the model (ChatML and SmolLM2's template drop them).
  bool renders_tools() const { return renders_tools_; }
  bool renders_tool_calls() const { return renders_tool_calls_; }

 private:
  JinjaTemplate template_;
  std::optional<JinjaTemplate> tool_use_template_;
  std::string origin_;
  JsonValue special_tokens_;
  bool writes_reasoning_ = false;
  bool renders_tools_ = false;
  bool renders_tool_calls_ = false;
};

}  // namespace uberlm
