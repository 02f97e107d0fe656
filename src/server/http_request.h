#pragma once
// An HTTP/1.1 request (RFC 9112) as the server reads it: Beast's parser splits the head and frames the
// body; the checks here are the ones Beast leaves to its user (one Content-Length, only the chunked
// transfer coding, one Host, the body's Content-Encoding), and the decoding of gzip and deflate bodies
// within the body limit. No sockets here: the server (server/http_server.h) and the fuzz target
// (fuzz/http_request_fuzz.cpp) share these functions.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include <boost/beast/http/fields.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/system/error_code.hpp>

#include "core/error.h"

namespace uberlm {

// A request the HTTP layer refuses: the status, a message naming the limit or the part at fault, and
// that part (a header name, "body", "request line"), which the JSON error carries as its param.
class HttpError : public Error {
 public:
  HttpError(int status, const std::string& message, std::string part = "")
      : Error(message), status(status), part(std::move(part)) {}
  int status;
  std::string part;
};

struct HttpLimits {
  size_t max_head_bytes = 32u << 10;  // request line and headers together
  size_t max_body_bytes = 16u << 20;  // the body as sent, and again once decoded
};

using RequestHead = boost::beast::http::request_header<>;

// The HttpError for an error of Beast's parser (431 for a head past the limit, 413 for a body past it,
// 505 for a version other than 1.0 and 1.1, 400 naming the part for malformed framing).
HttpError parse_error(const boost::system::error_code& error, const HttpLimits& limits);

// The framing checks Beast does not make. Beast already refuses conflicting Content-Length values and
// Transfer-Encoding beside Content-Length; this refuses what it lets through: a repeated Content-Length
// line (even with equal values: a proxy may read a different one), a transfer coding other than a lone
// "chunked", Transfer-Encoding in HTTP/1.0, a missing or repeated Host in HTTP/1.1, an Expect other than
// 100-continue. Throws HttpError.
void check_request_head(const RequestHead& head);

enum class ContentCoding { Identity, Gzip, Deflate };

// The body's Content-Encoding; throws HttpError 415 for a coding the server does not decode.
ContentCoding content_coding(const RequestHead& head);

// The body decoded into at most max_bytes. Throws HttpError 413 naming the limit as soon as the decoded
// size passes it (memory stays within the limit however far the data would inflate), 400 on corrupt data.
std::string decode_body(std::string body, ContentCoding coding, size_t max_bytes);

// Parses bytes as a request head and checks it: nullopt while the head is incomplete, else the head;
// throws HttpError. What the server does across socket reads, in one call (for the fuzz target).
std::optional<RequestHead> parse_request_head(std::string_view bytes, const HttpLimits& limits);

}  // namespace uberlm
