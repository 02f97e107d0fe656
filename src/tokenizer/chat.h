#pragma once
// Chat prompts in ChatML, the format of Qwen3.5's chat template.
#include <string>
#include <vector>

namespace uberlm {

struct ChatMessage {
  std::string role;  // system, user, assistant or tool
  std::string content;
};

// "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then "<|im_start|>assistant\n" when
// add_generation_prompt. This is plain ChatML: a checkpoint's own Jinja chat_template (tool
// schemas, <think> handling) is not rendered here. Throws uberlm::Error on an unknown role.
std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

}  // namespace uberlm
