#pragma once
// The HTTP/1.1 server under the OpenAI API, on Boost.Beast (Debian's libboost1.74-dev).
//
// Why not cpp-httplib: Debian 12's 0.11.4 is a compiled library with its limits built in, and it gives
// each connection a pool thread from accept on, with a read timeout per recv() and no deadline for the
// head, so ~100 clients sending a byte a second starve every other request; it applies the payload limit
// neither to chunked bodies nor to the inflated size of compressed ones; it takes the first of two
// Content-Lengths, reads "abc" as 0, answers 400 for a huge header and one response to pipelined
// requests, and binds with SO_REUSEPORT. None of that can be changed from outside the library.
//
// How this one holds: a few I/O threads read every connection asynchronously, each step under a deadline
// (idle keep-alive, head, body, each write), so a slow client costs a socket and a buffer, never a
// thread. Complete requests go to a pool of worker threads (routes that may block, such as generation)
// or are answered on the I/O thread (cheap routes such as /health, which therefore stays fast however
// busy the workers are). Limits: connections (503 past it), head bytes (431), body bytes as sent and
// once decoded from gzip/deflate (413, checked while reading and while inflating). Every response
// carries X-Request-Id; an exception a handler lets out is logged with it and answered 500.
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/http_request.h"

namespace uberlm {

struct HttpServerConfig {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port
  int worker_threads = 96;
  int io_threads = 2;
  int max_connections = 1024;
  std::chrono::milliseconds idle_timeout{30'000};  // a kept-alive connection waiting for its next request
  std::chrono::milliseconds head_timeout{10'000};  // from a request's first byte to the end of its head
  std::chrono::milliseconds body_timeout{60'000};  // the whole body
  std::chrono::milliseconds write_timeout{30'000};  // each write of a response (each chunk of a stream)
  HttpLimits limits;
};

// A request whose head and body were read, checked and decoded.
struct HttpRequest {
  std::string id;  // "req-N": in the X-Request-Id header and the log
  std::string method;
  std::string path;  // the target without its query
  const RequestHead* head = nullptr;
  std::string body;  // decoded

  // Every value of a header, in order (several lines of one header stay apart).
  std::vector<std::string_view> header_values(std::string_view name) const;
};

// What a handler answers. send() sets a whole reply, written once the handler returns. Worker routes
// may stream instead: start_stream() writes the head at once (chunked), write() each piece; both
// block until written and return false once the client is gone or a write missed its deadline.
class HttpReply {
 public:
  virtual ~HttpReply() = default;
  virtual void send(int status, std::string content_type, std::string body) = 0;
  virtual void set_header(std::string name, std::string value) = 0;
  virtual bool start_stream(std::string content_type) = 0;
  virtual bool write(std::string_view data) = 0;
  // True once the client closed or reset the connection (data it sent since does not count as gone).
  virtual bool client_gone() const = 0;
};

using HttpHandler = std::function<void(const HttpRequest&, HttpReply&)>;

enum class RunOn {
  IoThread,  // quick and never blocking: answered even when every worker is busy
  Worker,    // may block (generation, streaming)
};

// The body of an error reply, in the OpenAI format {"error": {message, type, param, code}}.
std::string error_body(int status, std::string_view type, std::string_view message, std::string_view param = "");

class HttpServer {
 public:
  explicit HttpServer(HttpServerConfig config);
  ~HttpServer();
  // Before bind(). A route with a body (takes_body false: a non-empty body is refused with 400).
  void route(std::string method, std::string path, RunOn run_on, bool takes_body, HttpHandler handler);
  // Runs on the I/O thread before the body is read: a reply it sends answers the request (and closes the
  // connection, whose body is then never read). For authentication.
  void set_gate(std::function<void(const HttpRequest&, HttpReply&)> gate);
  // Binds the listening socket exclusively (a second server on the port fails); returns the port.
  // Throws Error naming the address and the cause.
  int bind();
  // Serves until stop(); call after bind().
  void serve();
  // Async-signal-safe: serve() notices within a tenth of a second, closes every connection and returns.
  void stop();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace uberlm
