// Fuzzes the HTTP front end's reading of a request: Beast's parser and the checks of
// check_request_head() on the request line and headers, then, for a complete head, the decoding of
// what follows it as the body under its Content-Encoding and a small limit. An HttpError with a 4xx or
// 5xx status is the expected answer to bad bytes; any other exception or a sanitizer report is a finding.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/http_request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  uberlm::HttpLimits limits;
  limits.max_head_bytes = 4096;
  limits.max_body_bytes = 1 << 16;
  try {
    const auto head = uberlm::parse_request_head(bytes, limits);
    if (!head) return 0;
    const size_t end = bytes.find("\r\n\r\n");
    const std::string body(end == std::string_view::npos ? std::string_view() : bytes.substr(end + 4));
    const std::string decoded = uberlm::decode_body(body, uberlm::content_coding(*head), limits.max_body_bytes);
    if (decoded.size() > limits.max_body_bytes) std::abort();
  } catch (const uberlm::HttpError& error) {
    if (error.status < 400 || error.status > 599) std::abort();
  }
  return 0;
}
