#pragma once
// The events of a server-sent-events body as the server tests read them: each "data: " payload in
// order, up to the final "[DONE]".
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace uberlm {

struct SseEvents {
  std::vector<nlohmann::ordered_json> chunks;  // the JSON payloads before [DONE], keys in their order
  bool done = false;                   // the stream ended with "data: [DONE]"
};

inline SseEvents sse_events(const std::string& body) {
  SseEvents events;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    const std::string data = body.substr(at + 6, end - at - 6);
    at = end;
    if (data == "[DONE]") {
      events.done = true;
      break;
    }
    events.chunks.push_back(nlohmann::ordered_json::parse(data));
  }
  return events;
}

}  // namespace uberlm
