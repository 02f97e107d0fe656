#include "server/http_server.h"

#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/serializer.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace uberlm {

namespace net = boost::asio;
namespace http = boost::beast::http;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

namespace {

constexpr int kListenBacklog = 1024;
constexpr rlim_t kSpareDescriptors = 256;  // model files, pipes, logs: what the process holds besides sockets
constexpr size_t kFirstReadBytes = 4096;
constexpr size_t kDrainBytes = 16u << 10;
// After refusing a request whose bytes are still arriving, the server reads and drops them for this long
// before closing: closing with unread data makes the kernel send a reset, which can destroy the refusal
// before the client reads it.
constexpr std::chrono::milliseconds kLingerTimeout{1000};
constexpr std::chrono::milliseconds kAcceptRetryDelay{50};
constexpr std::chrono::milliseconds kStopCheckInterval{100};
constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";

std::string_view view(boost::beast::string_view text) { return {text.data(), text.size()}; }

// The path of an origin-form ("/a?b") or absolute-form ("http://host/a?b") target.
std::string path_of(std::string_view target) {
  for (std::string_view scheme : {"http://", "https://"}) {
    if (target.substr(0, scheme.size()) == scheme) {
      const size_t slash = target.find('/', scheme.size());
      target = slash == std::string_view::npos ? "/" : target.substr(slash);
    }
  }
  return std::string(target.substr(0, target.find('?')));
}

std::string_view error_type(int status) {
  if (status == 503) return "server_overloaded";
  return status >= 500 ? "server_error" : "invalid_request_error";
}

bool is_parse_error(const error_code& error) {
  return error.category() == make_error_code(http::error::need_more).category();
}

// Raises the soft descriptor limit to what max_connections needs; fails when the hard limit is lower.
void reserve_descriptors(int max_connections) {
  const rlim_t needed = static_cast<rlim_t>(max_connections) + kSpareDescriptors;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur >= needed) return;
  if (limit.rlim_max < needed) {
    fail("serve: {} connections need {} file descriptors, and this process may open at most {} (ulimit -Hn); "
         "lower the connection limit or raise that limit",
         max_connections, needed, limit.rlim_max);
  }
  limit.rlim_cur = needed;
  if (setrlimit(RLIMIT_NOFILE, &limit) != 0) fail("serve: cannot raise the file descriptor limit to {}", needed);
}

struct Route {
  RunOn run_on;
  bool takes_body;
  HttpHandler handler;
};

class Session;

}  // namespace

std::string error_body(int status, std::string_view type, std::string_view message, std::string_view param) {
  using json = nlohmann::json;
  const json body = {{"error",
                      {{"message", message},
                       {"type", type},
                       {"param", param.empty() ? json(nullptr) : json(param)},
                       {"code", status}}}};
  // Messages quote what the client sent (a path, a header), which may be invalid UTF-8: such bytes
  // become U+FFFD instead of an exception.
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<std::string_view> HttpRequest::header_values(std::string_view name) const {
  std::vector<std::string_view> values;
  for (auto [line, end] = head->equal_range(boost::beast::string_view(name.data(), name.size())); line != end; ++line) {
    values.push_back(view(line->value()));
  }
  return values;
}

struct HttpServer::Impl {
  explicit Impl(HttpServerConfig config) : config(std::move(config)) {}

  void accept();
  void on_accept(const error_code& error, tcp::socket socket);
  void shut_down_connections();
  std::string next_request_id() { return fmt::format("req-{}", ++requests); }

  const HttpServerConfig config;
  std::map<std::string, std::map<std::string, Route>> routes;  // path -> method -> route
  std::function<void(const HttpRequest&, HttpReply&)> gate;
  net::io_context io;
  tcp::acceptor acceptor{io};
  net::steady_timer accept_retry{io};
  std::optional<net::thread_pool> workers;
  std::atomic<bool> stop_requested{false};
  std::atomic<int> connections{0};
  std::atomic<uint64_t> requests{0};
  std::mutex sessions_mutex;
  std::unordered_map<const Session*, std::weak_ptr<Session>> sessions;
};

namespace {

// One connection: reads requests one after another (pipelined ones from the same buffer), each step
// under a deadline; runs each request's handler and writes its reply. Its strand serialises all of it.
class Session final : public HttpReply, public std::enable_shared_from_this<Session> {
 public:
  Session(HttpServer::Impl& server, tcp::socket socket)
      : server_(server), socket_(std::move(socket)), fd_(socket_.native_handle()), deadline_(socket_.get_executor()) {}

  ~Session() override {
    --server_.connections;
    std::lock_guard lock(server_.sessions_mutex);
    server_.sessions.erase(this);
  }

  // Both on the session's strand, as everything else the session does.
  void start() {
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] { self->read_request(); });
  }
  void refuse_connection(const HttpError& error) {
    net::dispatch(socket_.get_executor(), [self = shared_from_this(), error] { self->refuse(error); });
  }

  // From any thread: wakes whatever the connection waits for; the session then ends.
  void shut_down() const { ::shutdown(fd_, SHUT_RDWR); }

  // Answers with the error and closes: the connection's framing can no longer be trusted, or the
  // request's body was left unread.
  void refuse(const HttpError& error) {
    keep_alive_ = false;
    if (request_.id.empty()) request_.id = server_.next_request_id();
    send(error.status, "application/json", error_body(error.status, error_type(error.status), error.what(), error.part));
    write_reply();
  }

  void send(int status, std::string content_type, std::string body) override {
    replied_ = true;
    response_.result(static_cast<unsigned>(status));
    response_.set(http::field::content_type, content_type);
    response_.body() = std::move(body);
  }

  void set_header(std::string name, std::string value) override { response_.set(name, value); }

  bool start_stream(std::string content_type) override {
    streaming_ = true;
    chunked_ = version_ == 11;
    if (!chunked_) keep_alive_ = false;  // HTTP/1.0 has no chunks: the end of the connection ends the body
    http::response<http::empty_body> head{http::status::ok, version_};
    for (const auto& line : response_) head.set(line.name_string(), line.value());
    head.set(http::field::content_type, content_type);
    head.set("X-Request-Id", request_.id);
    head.keep_alive(keep_alive_);
    if (chunked_) head.chunked(true);
    http::response_serializer<http::empty_body> serializer(head);
    return write_blocking([&](auto done) { http::async_write_header(socket_, serializer, std::move(done)); });
  }

  bool write(std::string_view data) override {
    const net::const_buffer bytes(data.data(), data.size());
    if (!chunked_) return write_blocking([&](auto done) { net::async_write(socket_, bytes, std::move(done)); });
    return write_blocking([&](auto done) { net::async_write(socket_, http::make_chunk(bytes), std::move(done)); });
  }

  bool client_gone() const override {
    if (stream_broken_) return true;
    pollfd entry{fd_, POLLIN | POLLRDHUP, 0};
    if (poll(&entry, 1, 0) <= 0) return false;
    if (entry.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) return true;
    // Readable: either a pipelined request (data) or an orderly close (0 bytes).
    char byte;
    return recv(fd_, &byte, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
  }

 private:
  // Cancels the pending read or write once `limit` has passed. Cancelling (rather than closing, as
  // Beast's tcp_stream does) leaves the socket open for the 408 that tells the client why.
  void arm(std::chrono::milliseconds limit) {
    deadline_passed_ = false;
    deadline_.expires_after(limit);
    deadline_.async_wait([weak = weak_from_this()](const error_code& error) {
      const auto self = weak.lock();
      if (error || !self) return;
      self->deadline_passed_ = true;
      error_code ignored;
      self->socket_.cancel(ignored);
    });
  }

  bool deadline_passed(const error_code& error) const {
    return deadline_passed_ && error == net::error::operation_aborted;
  }

  void read_request() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(server_.config.limits.max_head_bytes));
    parser_->body_limit(server_.config.limits.max_body_bytes);
    request_ = HttpRequest{};
    response_ = {};
    replied_ = streaming_ = stream_broken_ = false;
    route_ = nullptr;
    if (server_.stop_requested) return;
    if (buffer_.size() > 0) return read_head();  // a pipelined request
    arm(server_.config.idle_timeout);
    socket_.async_read_some(buffer_.prepare(kFirstReadBytes), [self = shared_from_this()](error_code error, size_t n) {
      self->deadline_.cancel();
      if (error) return;  // closed, reset or idle past the limit between requests: nothing to answer
      self->buffer_.commit(n);
      self->read_head();
    });
  }

  void read_head() {
    arm(server_.config.head_timeout);
    http::async_read_header(socket_, buffer_, *parser_,
                            [self = shared_from_this()](error_code error, size_t) { self->on_head(error); });
  }

  // After reading a request's `part` (its "head" or "body"): a passed deadline is answered 408 naming
  // `param`, a malformed message its 4xx, a closed connection nothing. True when the read failed.
  bool read_failed(const error_code& error, std::string_view part, std::string_view param,
                   std::chrono::milliseconds limit) {
    deadline_.cancel();
    if (deadline_passed(error)) {
      refuse(HttpError(408, fmt::format("the request {} was not complete within {} ms", part, limit.count()),
                       std::string(param)));
      return true;
    }
    if (error && is_parse_error(error)) refuse(parse_error(error, server_.config.limits));
    return static_cast<bool>(error);
  }

  void on_head(const error_code& error) {
    if (read_failed(error, "head", "headers", server_.config.head_timeout)) return;
    const RequestHead& head = parser_->get().base();
    version_ = head.version() == 10 ? 10 : 11;
    request_.id = server_.next_request_id();
    request_.method = std::string(view(head.method_string()));
    request_.path = path_of(view(head.target()));
    request_.head = &head;
    keep_alive_ = parser_->keep_alive();
    try {
      check_request_head(head);
      if (server_.gate) {
        server_.gate(request_, *this);
        if (replied_) {
          keep_alive_ = false;
          return write_reply();
        }
      }
      route_ = &find_route();
      coding_ = content_coding(head);
      // Address space for the whole limit: a chunked body grown by doubling would copy nearly the limit
      // into twice it. Pages never written stay out of memory.
      if (parser_->chunked()) parser_->get().body().reserve(server_.config.limits.max_body_bytes);
    } catch (const HttpError& refusal) {
      return refuse(refusal);
    }
    if (head.find(http::field::expect) == head.end() || version_ != 11 || parser_->is_done()) return read_body();
    arm(server_.config.write_timeout);
    net::async_write(socket_, net::buffer(kContinue), [self = shared_from_this()](error_code error, size_t) {
      self->deadline_.cancel();
      if (!error) self->read_body();
    });
  }

  const Route& find_route() {
    const auto path = server_.routes.find(request_.path);
    if (path == server_.routes.end()) {
      throw HttpError(404, fmt::format("no route for {} {}", request_.method, request_.path));
    }
    const auto method = path->second.find(request_.method);
    if (method != path->second.end()) return method->second;
    std::string allowed;
    for (const auto& [name, route] : path->second) allowed += (allowed.empty() ? "" : ", ") + name;
    set_header("Allow", allowed);
    throw HttpError(405, fmt::format("{} takes {}, not {}", request_.path, allowed, request_.method), "method");
  }

  void read_body() {
    if (parser_->is_done()) return on_body({});
    arm(server_.config.body_timeout);
    http::async_read(socket_, buffer_, *parser_,
                     [self = shared_from_this()](error_code error, size_t) { self->on_body(error); });
  }

  void on_body(const error_code& error) {
    if (read_failed(error, "body", "body", server_.config.body_timeout)) return;
    request_.body = std::move(parser_->get().body());
    if (!route_->takes_body && !request_.body.empty()) {
      return refuse(HttpError(400, fmt::format("{} {} takes no body", request_.method, request_.path), "body"));
    }
    if (route_->run_on == RunOn::IoThread) {
      run_handler();
      return write_reply();
    }
    net::post(*server_.workers, [self = shared_from_this()] {
      self->run_handler();
      self->finish_stream();
      net::dispatch(self->socket_.get_executor(), [self] { self->write_reply(); });
    });
  }

  // The one place an exception from a handler ends: 4xx for what the request got wrong, 500 (logged with
  // the request id) for anything else.
  void run_handler() {
    try {
      if (!request_.body.empty()) {
        request_.body = decode_body(std::move(request_.body), coding_, server_.config.limits.max_body_bytes);
      }
      route_->handler(request_, *this);
      if (!replied_ && !streaming_) throw std::logic_error("the handler sent no reply");
    } catch (const HttpError& error) {
      answer_error(error.status, error.what(), error.part);
    } catch (const std::exception& error) {
      spdlog::error("{} {} {}: {}", request_.id, request_.method, request_.path, error.what());
      answer_internal_error();
    } catch (...) {
      spdlog::error("{} {} {}: an exception of unknown type", request_.id, request_.method, request_.path);
      answer_internal_error();
    }
  }

  void answer_internal_error() {
    answer_error(500, fmt::format("internal server error; the server log names its cause under {}", request_.id), "");
  }

  void answer_error(int status, std::string_view message, std::string_view part) {
    if (streaming_) {
      stream_broken_ = true;  // the head is out: the connection ends without the last chunk, so the client sees the cut
      return;
    }
    response_ = {};
    send(status, "application/json", error_body(status, error_type(status), message, part));
  }

  // On a worker, after the handler: the last chunk of a stream.
  void finish_stream() {
    if (streaming_ && chunked_ && !stream_broken_) {
      write_blocking([&](auto done) { net::async_write(socket_, http::make_chunk_last(), std::move(done)); });
    }
  }

  void write_reply() {
    if (streaming_) {
      if (keep_alive_ && !stream_broken_) return read_request();
      return close_gracefully();
    }
    if (server_.stop_requested) keep_alive_ = false;
    response_.version(version_);
    response_.keep_alive(keep_alive_);
    response_.set("X-Request-Id", request_.id);
    response_.prepare_payload();
    arm(server_.config.write_timeout);
    http::async_write(socket_, response_, [self = shared_from_this()](error_code error, size_t) {
      self->deadline_.cancel();
      if (error) return;
      if (self->keep_alive_) return self->read_request();
      self->close_gracefully();
    });
  }

  void close_gracefully() {
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_send, ignored);
    drain_buffer_.resize(kDrainBytes);
    arm(kLingerTimeout);
    drain();
  }

  void drain() {
    socket_.async_read_some(net::buffer(drain_buffer_), [self = shared_from_this()](error_code error, size_t) {
      if (!error) return self->drain();
      self->deadline_.cancel();  // end of data, a reset or the linger deadline: the session ends, the socket closes
    });
  }

  // On a worker: runs initiate(handler) on the strand and waits for the write, under the write deadline.
  // False (and false from then on) once a write failed.
  template <typename Initiate>
  bool write_blocking(Initiate initiate) {
    if (stream_broken_) return false;
    std::promise<error_code> written;
    std::future<error_code> result = written.get_future();
    net::dispatch(socket_.get_executor(), [&] {
      arm(server_.config.write_timeout);
      initiate([this, &written](error_code error, size_t) {
        deadline_.cancel();
        written.set_value(error);
      });
    });
    if (result.get()) stream_broken_ = true;
    return !stream_broken_;
  }

  HttpServer::Impl& server_;
  tcp::socket socket_;
  const int fd_;
  net::steady_timer deadline_;
  bool deadline_passed_ = false;
  boost::beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  unsigned version_ = 11;
  HttpRequest request_;
  const Route* route_ = nullptr;
  ContentCoding coding_ = ContentCoding::Identity;
  bool keep_alive_ = false;
  http::response<http::string_body> response_;
  bool replied_ = false;
  bool streaming_ = false;
  bool chunked_ = false;
  std::atomic<bool> stream_broken_ = false;  // read by client_gone() from the worker, set on the strand
  std::vector<char> drain_buffer_;
};

}  // namespace

void HttpServer::Impl::accept() {
  acceptor.async_accept(net::make_strand(io),
                        [this](const error_code& error, tcp::socket socket) { on_accept(error, std::move(socket)); });
}

void HttpServer::Impl::on_accept(const error_code& error, tcp::socket socket) {
  if (stop_requested || !acceptor.is_open()) return;
  if (error) {
    // Out of descriptors or memory: wait a little rather than spin; the clients stay in the backlog.
    spdlog::warn("accept failed: {}", error.message());
    accept_retry.expires_after(kAcceptRetryDelay);
    accept_retry.async_wait([this](const error_code& cancelled) {
      if (!cancelled) accept();
    });
    return;
  }
  auto session = std::make_shared<Session>(*this, std::move(socket));
  {
    std::lock_guard lock(sessions_mutex);
    sessions.emplace(session.get(), session);
  }
  if (++connections > config.max_connections) {
    session->refuse_connection(HttpError(503, fmt::format("the server holds {} connections, its limit; retry later",
                                               config.max_connections)));
  } else {
    session->start();
  }
  accept();
}

void HttpServer::Impl::shut_down_connections() {
  error_code ignored;
  acceptor.close(ignored);
  accept_retry.cancel();
  // Strong references taken under the lock and used after it: the last reference to a session may be one
  // of these, and its destructor takes the lock.
  std::vector<std::shared_ptr<Session>> open;
  {
    std::lock_guard lock(sessions_mutex);
    for (const auto& [key, weak] : sessions) {
      if (auto session = weak.lock()) open.push_back(std::move(session));
    }
  }
  for (const auto& session : open) session->shut_down();
}

HttpServer::HttpServer(HttpServerConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

HttpServer::~HttpServer() = default;

void HttpServer::route(std::string method, std::string path, RunOn run_on, bool takes_body, HttpHandler handler) {
  impl_->routes[std::move(path)][std::move(method)] = Route{run_on, takes_body, std::move(handler)};
}

void HttpServer::set_gate(std::function<void(const HttpRequest&, HttpReply&)> gate) { impl_->gate = std::move(gate); }

int HttpServer::bind() {
  const HttpServerConfig& config = impl_->config;
  reserve_descriptors(config.max_connections);
  error_code error;
  tcp::resolver resolver(impl_->io);
  const auto endpoints = resolver.resolve(config.host, std::to_string(config.port),
                                          tcp::resolver::passive | tcp::resolver::numeric_service, error);
  if (error || endpoints.empty()) fail("serve: cannot resolve host '{}': {}", config.host, error.message());
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  tcp::acceptor& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol(), error);
  // SO_REUSEADDR lets a restarted server bind while its old connections sit in TIME_WAIT; on Linux it
  // never lets a second socket listen on the port. SO_REUSEPORT, which would split the traffic, stays off.
  if (!error) acceptor.set_option(tcp::acceptor::reuse_address(true), error);
  if (!error) acceptor.bind(endpoint, error);
  if (!error) acceptor.listen(kListenBacklog, error);
  if (error) fail("serve: cannot listen on {}:{}: {}", config.host, config.port, error.message());
  return acceptor.local_endpoint().port();
}

void HttpServer::serve() {
  Impl& impl = *impl_;
  impl.workers.emplace(static_cast<size_t>(impl.config.worker_threads));
  auto io_work = net::make_work_guard(impl.io);
  impl.accept();
  std::vector<std::thread> io_threads;
  for (int i = 0; i < impl.config.io_threads; ++i) io_threads.emplace_back([&impl] { impl.io.run(); });
  // stop() may run in a signal handler, so it only sets a flag, polled here.
  while (!impl.stop_requested) std::this_thread::sleep_for(kStopCheckInterval);
  std::promise<void> shut;
  net::post(impl.io, [&] {
    impl.shut_down_connections();
    shut.set_value();
  });
  shut.get_future().wait();
  // Handlers see their clients gone and return; their last writes need the I/O threads, which therefore
  // run until the workers are done.
  impl.workers->join();
  io_work.reset();
  for (std::thread& thread : io_threads) thread.join();
}

void HttpServer::stop() { impl_->stop_requested = true; }

}  // namespace uberlm
