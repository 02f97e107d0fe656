// Fuzzes the OpenAI request parser on arbitrary bodies, as completions and as chat. An ApiError with
// a 4xx status is the expected answer to a bad request; any other exception or a sanitizer report
// is a finding.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "server/request_parser.h"

namespace {

constexpr int64_t kMaxModelLen = 4096;

template <typename Parse>
void check(Parse parse, std::string_view body) {
  try {
    auto request = parse(body, "tiny", kMaxModelLen);
    // An accepted request is within the limits the engine relies on.
    const auto& options = request.options;
    if (options.max_tokens && (*options.max_tokens < 1 || *options.max_tokens > kMaxModelLen)) std::abort();
    if (!(options.temperature >= 0.0f && options.temperature <= 2.0f)) std::abort();
    if (!(options.top_p > 0.0f && options.top_p <= 1.0f) || options.top_k < 0) std::abort();
    for (const auto& stop : options.stop) {
      if (stop.empty()) std::abort();
    }
  } catch (const uberlm::ApiError& error) {
    if (error.status < 400 || error.status >= 500) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  check(uberlm::parse_completion_request, body);
  check(uberlm::parse_chat_completion_request, body);
  return 0;
}
