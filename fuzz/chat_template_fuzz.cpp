// Fuzzes the Jinja engine of chat templates (tokenizer/jinja_template.h): the input up to its first 0xFF
// byte is a template, rendered with a fixed conversation as transformers would pass it, and with the JSON
// after that byte as extra variables when it parses as an object. A TemplateError is the expected answer
// to a bad template; any other exception or a sanitizer report is a finding.
#include <cstdint>
#include <string>

#include "tokenizer/jinja_template.h"

namespace {

const uberlm::JsonValue kContext = uberlm::JsonValue::parse(R"({
  "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <tool_response>"},
               {"role": "assistant", "content": "<think>\nx\n</think>\n\ny", "reasoning_content": "r",
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"a": [1, 2.5, null, true]}}}]},
               {"role": "tool", "content": "42"}],
  "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
  "add_generation_prompt": true, "bos_token": "<s>", "enable_thinking": false})");

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\xFF');
  uberlm::JsonValue context = kContext;
  if (split != std::string::npos) {
    const uberlm::JsonValue extra = uberlm::JsonValue::parse(input.substr(split + 1), nullptr, false);
    if (extra.is_object()) {
      for (const auto& item : extra.items()) context[item.key()] = item.value();
    }
  }
  try {
    const uberlm::JinjaTemplate chat_template(input.substr(0, split));
    chat_template.render(context);
  } catch (const uberlm::TemplateError&) {
  }
  return 0;
}
