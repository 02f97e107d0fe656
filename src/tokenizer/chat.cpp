#include "tokenizer/chat.h"

#include <array>
#include <string_view>

#include "core/error.h"

namespace uberlm {

std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  constexpr std::array<std::string_view, 4> kRoles = {"system", "user", "assistant", "tool"};
  std::string prompt;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    bool known = false;
    for (const std::string_view role : kRoles) known = known || message.role == role;
    if (!known) {
      fail("chat message {}: unknown role '{}' (expected system, user, assistant or tool)", i,
           message.role);
    }
    prompt += "<|im_start|>" + message.role + "\n" + message.content + "<|im_end|>\n";
  }
  if (add_generation_prompt) prompt += "<|im_start|>assistant\n";
  return prompt;
}

}  // namespace uberlm
