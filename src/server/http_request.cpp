#include "server/http_request.h"

#include <zlib.h>

#include <array>
#include <climits>
#include <memory>

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>

namespace uberlm {

namespace http = boost::beast::http;
using http::field;

namespace {

std::string_view trimmed(boost::beast::string_view value) {
  std::string_view text(value.data(), value.size());
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

bool iequals(std::string_view a, std::string_view b) {
  return boost::beast::iequals(boost::beast::string_view(a.data(), a.size()), boost::beast::string_view(b.data(), b.size()));
}

void check_single_line(const RequestHead& head, field name, const char* shown) {
  if (const size_t lines = head.count(name); lines > 1) {
    throw HttpError(400, fmt::format("{} appears {} times; a request may carry it once", shown, lines), shown);
  }
}

void check_framing(const RequestHead& head) {
  check_single_line(head, field::content_length, "Content-Length");
  check_single_line(head, field::transfer_encoding, "Transfer-Encoding");
  if (const auto length = head.find(field::content_length); length != head.end()) {
    // Beast takes "5, 5" as 5; a proxy in front may not.
    if (trimmed(length->value()).find(',') != std::string_view::npos) {
      throw HttpError(400, "Content-Length must be one decimal number, not a list", "Content-Length");
    }
  }
  const auto coding = head.find(field::transfer_encoding);
  if (coding == head.end()) return;
  if (head.version() == 10) {
    throw HttpError(400, "Transfer-Encoding is not defined for HTTP/1.0 requests", "Transfer-Encoding");
  }
  if (!iequals(trimmed(coding->value()), "chunked")) {
    throw HttpError(501, fmt::format("Transfer-Encoding '{}' is not supported; only chunked is",
                                     std::string_view(coding->value().data(), coding->value().size())),
                    "Transfer-Encoding");
  }
}

void check_host(const RequestHead& head) {
  if (head.version() != 11) return;
  if (const size_t hosts = head.count(field::host); hosts != 1) {
    throw HttpError(400, fmt::format("an HTTP/1.1 request carries exactly one Host header, this one {}", hosts),
                    "Host");
  }
}

void check_expect(const RequestHead& head) {
  check_single_line(head, field::expect, "Expect");
  const auto expect = head.find(field::expect);
  if (expect != head.end() && !iequals(trimmed(expect->value()), "100-continue")) {
    throw HttpError(417, "the only Expect this server meets is 100-continue", "Expect");
  }
}

}  // namespace

HttpError parse_error(const boost::system::error_code& error, const HttpLimits& limits) {
  if (error == http::error::header_limit) {
    return HttpError(431, fmt::format("the request line and headers exceed {} bytes, the limit", limits.max_head_bytes),
                     "headers");
  }
  if (error == http::error::body_limit) {
    return HttpError(413, fmt::format("the request body exceeds {} bytes, the limit", limits.max_body_bytes), "body");
  }
  if (error == http::error::bad_method) return HttpError(400, "malformed method in the request line", "method");
  if (error == http::error::bad_target) return HttpError(400, "malformed target in the request line", "target");
  if (error == http::error::bad_version) {
    return HttpError(505, "the request line's HTTP version is not HTTP/1.0 or HTTP/1.1", "version");
  }
  if (error == http::error::bad_content_length) {
    return HttpError(400, "Content-Length must be one decimal number, without a conflicting value or Transfer-Encoding",
                     "Content-Length");
  }
  if (error == http::error::bad_transfer_encoding) {
    return HttpError(400, "Transfer-Encoding must not repeat chunked or come with Content-Length", "Transfer-Encoding");
  }
  if (error == http::error::bad_chunk || error == http::error::bad_chunk_extension) {
    return HttpError(400, "malformed chunk in the chunked body", "body");
  }
  if (error == http::error::bad_field) return HttpError(400, "malformed header name", "headers");
  if (error == http::error::bad_value) {
    return HttpError(400, "a header value holds a control byte (NUL, or CR or LF alone)", "headers");
  }
  if (error == http::error::bad_line_ending) {
    return HttpError(400, "a line of the request head does not end in CRLF", "headers");
  }
  if (error == http::error::bad_obs_fold) return HttpError(400, "a header is folded over lines (obs-fold)", "headers");
  if (error == http::error::partial_message || error == http::error::end_of_stream) {
    return HttpError(400, "the connection ended inside the request", "body");
  }
  return HttpError(400, fmt::format("malformed request head: {}", error.message()), "headers");
}

void check_request_head(const RequestHead& head) {
  check_framing(head);
  check_host(head);
  check_expect(head);
}

ContentCoding content_coding(const RequestHead& head) {
  if (const size_t lines = head.count(field::content_encoding); lines > 1) {
    throw HttpError(415, fmt::format("Content-Encoding appears {} times; send one coding", lines), "Content-Encoding");
  }
  const auto encoding = head.find(field::content_encoding);
  if (encoding == head.end()) return ContentCoding::Identity;
  const std::string_view coding = trimmed(encoding->value());
  if (coding.empty() || iequals(coding, "identity")) return ContentCoding::Identity;
  if (iequals(coding, "gzip") || iequals(coding, "x-gzip")) return ContentCoding::Gzip;
  if (iequals(coding, "deflate")) return ContentCoding::Deflate;
  throw HttpError(415, fmt::format("Content-Encoding '{}' is not supported; send gzip, deflate or identity", coding),
                  "Content-Encoding");
}

std::string decode_body(std::string body, ContentCoding coding, size_t max_bytes) {
  if (coding == ContentCoding::Identity) return body;
  const char* name = coding == ContentCoding::Gzip ? "gzip" : "deflate (zlib format, RFC 9110 8.4.1.2)";
  if (body.size() > UINT_MAX) throw HttpError(413, "the compressed request body exceeds 4 GiB", "body");
  z_stream stream{};
  // windowBits 15 reads the zlib wrapper; +16 reads the gzip wrapper instead.
  if (inflateInit2(&stream, coding == ContentCoding::Gzip ? 15 + 16 : 15) != Z_OK) throw std::bad_alloc();
  const std::unique_ptr<z_stream, int (*)(z_stream*)> end(&stream, inflateEnd);
  stream.next_in = reinterpret_cast<Bytef*>(body.data());
  stream.avail_in = static_cast<uInt>(body.size());
  std::string decoded;
  // Address space for the whole limit at once: growing by doubling would copy a buffer of nearly the
  // limit into one of twice it. Pages never written stay out of memory.
  decoded.reserve(max_bytes);
  std::array<char, 64 << 10> piece;
  int status = Z_OK;
  while (status != Z_STREAM_END) {
    stream.next_out = reinterpret_cast<Bytef*>(piece.data());
    stream.avail_out = static_cast<uInt>(piece.size());
    status = inflate(&stream, Z_NO_FLUSH);
    if (status == Z_NEED_DICT || status == Z_DATA_ERROR || status == Z_MEM_ERROR) {
      throw HttpError(400, fmt::format("the request body is not valid {} data: {}", name,
                                       stream.msg != nullptr ? stream.msg : "corrupt stream"),
                      "Content-Encoding");
    }
    const size_t produced = piece.size() - stream.avail_out;
    if (decoded.size() + produced > max_bytes) {
      throw HttpError(413, fmt::format("the {} request body decodes to more than {} bytes, the limit", name, max_bytes),
                      "body");
    }
    decoded.append(piece.data(), produced);
    if (status == Z_BUF_ERROR || (stream.avail_in == 0 && produced == 0 && status != Z_STREAM_END)) {
      throw HttpError(400, fmt::format("the {} request body ends inside its compressed stream", name),
                      "Content-Encoding");
    }
  }
  if (stream.avail_in != 0) {
    throw HttpError(400, fmt::format("{} bytes follow the end of the {} request body", stream.avail_in, name),
                    "Content-Encoding");
  }
  return decoded;
}

std::optional<RequestHead> parse_request_head(std::string_view bytes, const HttpLimits& limits) {
  http::request_parser<http::empty_body> parser;
  parser.header_limit(static_cast<std::uint32_t>(limits.max_head_bytes));
  parser.body_limit(limits.max_body_bytes);
  parser.eager(false);
  size_t used = 0;
  while (!parser.is_header_done()) {
    boost::system::error_code error;
    const size_t taken = parser.put(boost::asio::buffer(bytes.data() + used, bytes.size() - used), error);
    used += taken;
    if (error == http::error::need_more) return std::nullopt;
    if (error) throw parse_error(error, limits);
    if (taken == 0 && !parser.is_header_done()) return std::nullopt;
  }
  check_request_head(parser.get().base());
  return parser.get().base();
}

}  // namespace uberlm
