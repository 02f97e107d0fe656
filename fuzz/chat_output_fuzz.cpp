// Fuzzes the reading of chat replies (server/chat_output_parser.h), whose text a model writes: the input
// is cut into pieces at its 0xFF bytes and streamed with every option set; the streamed result must equal
// parsing the whole reply at once, and every tool call must carry a JSON object as its arguments. Any
// exception, mismatch or sanitizer report is a finding.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "server/chat_output_parser.h"

namespace {

const uberlm::JsonValue kTools = uberlm::JsonValue::parse(
    R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
        "properties": {"n": {"type": "integer"}, "s": {"type": "string"}}}}}])");

uberlm::ChatOutputDelta parse(const uberlm::ChatOutputOptions& options, const std::vector<std::string>& pieces) {
  uberlm::ChatOutputParser parser(options);
  uberlm::ChatOutputDelta all;
  auto add = [&](uberlm::ChatOutputDelta delta) {
    all.reasoning += delta.reasoning;
    all.content += delta.content;
    for (auto& call : delta.tool_calls) all.tool_calls.push_back(std::move(call));
  };
  for (const std::string& piece : pieces) add(parser.feed(piece));
  add(parser.finish());
  return all;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> pieces(1);
  std::string whole;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0xFF) {
      pieces.emplace_back();
      continue;
    }
    pieces.back() += static_cast<char>(data[i]);
    whole += static_cast<char>(data[i]);
  }
  for (int flags = 0; flags < 8; ++flags) {
    uberlm::ChatOutputOptions options;
    options.reasoning = flags & 1;
    options.starts_in_reasoning = flags & 2;
    if (flags & 4) options.tools = kTools;
    const uberlm::ChatOutputDelta streamed = parse(options, pieces);
    const uberlm::ChatOutputDelta at_once = parse(options, {whole});
    if (streamed.reasoning != at_once.reasoning || streamed.content != at_once.content ||
        streamed.tool_calls.size() != at_once.tool_calls.size()) {
      std::abort();
    }
    for (const auto& call : streamed.tool_calls) {
      if (call.name.empty() || !uberlm::JsonValue::parse(call.arguments).is_object()) std::abort();
    }
  }
  return 0;
}
