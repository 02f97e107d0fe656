// A hostile client against the HTTP layer, on loopback: malformed and smuggling framing, huge heads,
// chunked and compressed floods, slow clients, too many connections, a second server on the port, a
// handler that throws. Each case gets its status and a JSON error naming the part at fault, and the
// server answers /health after it. The OpenAI cases run `serve`'s stack on the default model (CPU);
// the deadline, limit and guard cases a bare HttpServer with short limits. Every wait is bounded.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/model.h"
#include "runtime/engine_stack.h"
#include "server/http_server.h"
#include "server/openai_server.h"
#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/chat_template.h"

namespace uberlm {
namespace {

using json = nlohmann::json;
using namespace std::string_literals;
using Clock = std::chrono::steady_clock;
constexpr size_t kBodyLimit = HttpLimits{}.max_body_bytes;

struct RawResponse {
  int status = 0;
  std::string head;
  std::string body;

  std::string param() const {
    const json error = json::parse(body).at("error");
    return error.at("param").is_null() ? "" : error.at("param").get<std::string>();
  }
  std::string message() const { return json::parse(body).at("error").at("message").get<std::string>(); }
};

// One client connection speaking raw bytes, every read under a 10 s timeout.
class RawConnection {
 public:
  explicit RawConnection(int port) : fd_(socket(AF_INET, SOCK_STREAM, 0)) {
    if (fd_ < 0) throw Error("socket() failed");
    timeval timeout{10, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      close(fd_);
      throw Error(fmt::format("connect to port {} failed", port));
    }
  }
  RawConnection(const RawConnection&) = delete;
  ~RawConnection() { close(fd_); }

  // False once the server closed or reset the connection (it may refuse before reading everything).
  bool send_bytes(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t sent = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (sent <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(sent));
    }
    return true;
  }

  // The next response (Content-Length framed, as every reply of this server but streams); nullopt when
  // the connection ends first.
  std::optional<RawResponse> read_response() {
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill()) return std::nullopt;
    }
    RawResponse response;
    response.head = buffer_.substr(0, end + 2);
    response.status = std::stoi(response.head.substr(9, 3));
    const std::string length_text = header("Content-Length", response.head);
    const size_t length = length_text.empty() ? 0 : std::stoul(length_text);
    while (buffer_.size() < end + 4 + length) {
      if (!fill()) return std::nullopt;
    }
    response.body = buffer_.substr(end + 4, length);
    buffer_.erase(0, end + 4 + length);
    return response;
  }

  // True when the server closes the connection (within the read timeout) without sending more.
  bool closed_by_server() { return buffer_.empty() && !fill(); }

  static std::string header(std::string_view name, const std::string& head) {
    const std::string key = fmt::format("\r\n{}: ", name);
    const size_t at = head.find(key);
    if (at == std::string::npos) return "";
    const size_t start = at + key.size();
    return head.substr(start, head.find("\r\n", start) - start);
  }

 private:
  bool fill() {
    char piece[65536];
    const ssize_t got = recv(fd_, piece, sizeof(piece), 0);
    if (got <= 0) return false;
    buffer_.append(piece, static_cast<size_t>(got));
    return true;
  }

  int fd_;
  std::string buffer_;
};

std::optional<RawResponse> exchange(int port, std::string_view request) {
  RawConnection connection(port);
  connection.send_bytes(request);
  return connection.read_response();
}

bool healthy(int port) {
  const auto response = exchange(port, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  return response && response->status == 200;
}

std::string post(std::string_view path, std::string_view headers, std::string_view body) {
  return fmt::format("POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{}\r\n{}", path, body.size(), headers,
                     body);
}

// The resident memory of this process (server and clients), in bytes.
size_t resident_bytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoul(line.substr(6)) * 1024;
  }
  return 0;
}

// The highest resident memory seen while `work` runs, above what it was before.
size_t peak_growth(const std::function<void()>& work) {
  const size_t before = resident_bytes();
  std::atomic<bool> done = false;
  std::atomic<size_t> peak = before;
  std::thread sampler([&] {
    while (!done) {
      peak = std::max(peak.load(), resident_bytes());
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  work();
  done = true;
  sampler.join();
  return peak > before ? peak - before : 0;
}

// gzip of `zeros` zero bytes, made in pieces: 64 MiB deflate to about 65 KB.
std::string gzip_of_zeros(size_t zeros) {
  z_stream stream{};
  deflateInit2(&stream, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY);
  const std::string input(1u << 20, '\0');
  std::string output;
  char piece[65536];
  for (size_t left = zeros; left > 0 || stream.avail_in > 0;) {
    if (stream.avail_in == 0) {
      const size_t take = std::min(left, input.size());
      stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(input.data()));
      stream.avail_in = static_cast<uInt>(take);
      left -= take;
    }
    do {
      stream.next_out = reinterpret_cast<Bytef*>(piece);
      stream.avail_out = sizeof(piece);
      deflate(&stream, Z_NO_FLUSH);
      output.append(piece, sizeof(piece) - stream.avail_out);
    } while (stream.avail_out == 0);
  }
  int status;
  do {
    stream.next_out = reinterpret_cast<Bytef*>(piece);
    stream.avail_out = sizeof(piece);
    status = deflate(&stream, Z_FINISH);
    output.append(piece, sizeof(piece) - stream.avail_out);
  } while (status != Z_STREAM_END);
  deflateEnd(&stream);
  return output;
}

std::string gzip_of(std::string_view text) {
  uLongf size = compressBound(static_cast<uLong>(text.size())) + 32;
  std::string output(size, '\0');
  z_stream stream{};
  deflateInit2(&stream, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  stream.avail_in = static_cast<uInt>(text.size());
  stream.next_out = reinterpret_cast<Bytef*>(output.data());
  stream.avail_out = static_cast<uInt>(output.size());
  deflate(&stream, Z_FINISH);
  output.resize(stream.total_out);
  deflateEnd(&stream);
  return output;
}

// `serve` on the default model, CPU backend, as the CLI assembles it.
class DefaultModelServer {
 public:
  DefaultModelServer() {
    const std::filesystem::path dir = std::filesystem::path(UBERLM_SOURCE_DIR) / "models" / "default";
    model_ = Model::load(dir);
    tokenizer_ = BpeTokenizer::load(dir / "tokenizer.json");
    EngineStackOptions options;
    options.device = "cpu";
    options.max_num_seqs = 4;
    options.max_model_len = 512;
    stack_ = std::make_unique<EngineStack>(*model_, tokenizer_.get(), options);
    ServerConfig config;
    config.http.port = 0;
    config.model_name = "default";
    config.stop_token_ids = model_->stop_token_ids;
    server_ = std::make_unique<OpenAiServer>(stack_->engine(), *tokenizer_, chat_template_, stack_->metrics(), config);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->serve(); });
  }
  ~DefaultModelServer() {
    server_->stop();
    thread_.join();
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<BpeTokenizer> tokenizer_;
  ChatTemplate chat_template_ = ChatTemplate::chatml();
  std::unique_ptr<EngineStack> stack_;
  std::unique_ptr<OpenAiServer> server_;
  int port_ = 0;
  std::thread thread_;
};

class HostileClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { server_ = new DefaultModelServer(); }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }
  static int port() { return server_->port(); }
  static DefaultModelServer* server_;
};

DefaultModelServer* HostileClientTest::server_ = nullptr;

const std::string kCompletion = R"({"model":"default","prompt":"Hello","max_tokens":2})";

struct BadRequest {
  const char* name;
  std::string request;
  int status;
  std::string param;  // the JSON error's param; "" for null
};

TEST_F(HostileClientTest, EveryBadRequestGetsItsStatusAndNamesThePartAndTheServerStaysHealthy) {
  const std::vector<BadRequest> cases = {
      {"undecodable path", "GET /%ff HTTP/1.1\r\nHost: x\r\n\r\n", 404, ""},
      {"undecodable sub-path", post("/v1/completions/%c3%28", "", kCompletion), 404, ""},
      {"byte 0xFF in the method", "G\xffT /health HTTP/1.1\r\nHost: x\r\n\r\n", 400, "method"},
      {"wrong method on a known path", "DELETE /health HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method"},
      {"GET on a POST route", "GET /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method"},
      {"HTTP/1.2 in the request line", "GET /health HTTP/1.2\r\nHost: x\r\n\r\n", 505, "version"},
      {"HTTP/2.0 in the request line", "GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "version"},
      {"malformed version", "GET /health HTTX/1.1\r\nHost: x\r\n\r\n", 505, "version"},
      {"NUL in a header value", "GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"s, 400, "headers"},
      {"no Host", "GET /health HTTP/1.1\r\n\r\n", 400, "Host"},
      {"two Hosts", "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "Host"},
      {"repeated equal Content-Length",
       post("/v1/completions", fmt::format("Content-Length: {}\r\n", kCompletion.size()), kCompletion), 400,
       "Content-Length"},
      {"conflicting Content-Length",
       "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400,
       "Content-Length"},
      {"Content-Length list", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n{}", 400,
       "Content-Length"},
      {"Transfer-Encoding with Content-Length",
       "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
       "Transfer-Encoding"},
      {"Content-Length after Transfer-Encoding",
       "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", 400,
       "Content-Length"},
      {"unknown transfer coding", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
       501, "Transfer-Encoding"},
      {"Transfer-Encoding in HTTP/1.0", "POST /v1/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
       "Transfer-Encoding"},
      {"malformed chunk", "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
       "body"},
      {"100 KB header", "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(100'000, 'a') + "\r\n\r\n", 431,
       "headers"},
      {"Content-Length past the body limit",
       fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", kBodyLimit + 1), 413,
       "body"},
      {"unsupported Content-Encoding", post("/v1/completions", "Content-Encoding: br\r\n", kCompletion), 415,
       "Content-Encoding"},
      {"corrupt gzip", post("/v1/completions", "Content-Encoding: gzip\r\n", "not gzip"), 400, "Content-Encoding"},
      {"truncated gzip",
       post("/v1/completions", "Content-Encoding: gzip\r\n", gzip_of(kCompletion).substr(0, 20)), 400,
       "Content-Encoding"},
      {"Expect other than 100-continue", post("/v1/completions", "Expect: magic\r\n", kCompletion), 417, "Expect"},
      {"a body on GET /health", "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 400, "body"},
      {"invalid JSON", post("/v1/completions", "", "{"), 400, ""},
      {"invalid UTF-8 in the prompt", post("/v1/completions", "", "{\"model\":\"default\",\"prompt\":\"\xff\"}"), 400,
       ""},
  };
  for (const BadRequest& bad : cases) {
    SCOPED_TRACE(bad.name);
    const auto response = exchange(port(), bad.request);
    ASSERT_TRUE(response) << "no response";
    EXPECT_EQ(response->status, bad.status) << response->body;
    EXPECT_EQ(response->param(), bad.param) << response->body;
    EXPECT_FALSE(response->message().empty());
    EXPECT_FALSE(RawConnection::header("X-Request-Id", response->head).empty());
    if (bad.status == 405) EXPECT_FALSE(RawConnection::header("Allow", response->head).empty());
    EXPECT_TRUE(healthy(port()));
  }
}

TEST_F(HostileClientTest, MalformedContentLengthIsRefusedNotReadAsZero) {
  const auto response =
      exchange(port(), "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n" + kCompletion);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 400);
  EXPECT_EQ(response->param(), "Content-Length");
}

TEST_F(HostileClientTest, PipelinedRequestsInOnePacketGetOneAnswerEachInOrder) {
  RawConnection connection(port());
  connection.send_bytes("GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + post("/v1/completions", "", kCompletion) +
                        "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  const auto health = connection.read_response();
  const auto completion = connection.read_response();
  const auto models = connection.read_response();
  ASSERT_TRUE(health && completion && models);
  EXPECT_EQ(health->body, R"({"status":"ok"})");
  EXPECT_EQ(completion->status, 200) << completion->body;
  EXPECT_EQ(json::parse(completion->body).at("object"), "text_completion");
  EXPECT_EQ(json::parse(models->body).at("object"), "list");
  EXPECT_TRUE(connection.closed_by_server());
}

TEST_F(HostileClientTest, BytesAfterARefusedHeadAreNeverServedAsASecondRequest) {
  RawConnection connection(port());
  connection.send_bytes(
      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"
      "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  const auto refusal = connection.read_response();
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->status, 400);
  EXPECT_TRUE(connection.closed_by_server());
}

TEST_F(HostileClientTest, CompressedAndChunkedBodiesWithinTheLimitAreServed) {
  const auto gzipped = exchange(port(), post("/v1/completions", "Content-Encoding: gzip\r\n", gzip_of(kCompletion)));
  ASSERT_TRUE(gzipped);
  EXPECT_EQ(gzipped->status, 200) << gzipped->body;
  const auto chunked = exchange(port(), fmt::format("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                                    "chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                                                    kCompletion.size(), kCompletion));
  ASSERT_TRUE(chunked);
  EXPECT_EQ(chunked->status, 200) << chunked->body;
}

// Four 40 MB chunked bodies at once, then four gzip bodies of 65 KB that inflate to 64 MiB: each is
// refused with 413 naming the limit, and memory grows by no more than the limit per request.
TEST_F(HostileClientTest, ChunkedAndCompressedFloodsAreRefusedWithBoundedMemory) {
  constexpr int kClients = 4;
  const std::string limit = std::to_string(kBodyLimit);
  const auto flood = [&](const std::function<std::optional<RawResponse>()>& request) {
    std::vector<std::optional<RawResponse>> responses(kClients);
    std::vector<std::thread> clients;
    for (int i = 0; i < kClients; ++i) clients.emplace_back([&, i] { responses[i] = request(); });
    for (std::thread& client : clients) client.join();
    for (const auto& response : responses) {
      ASSERT_TRUE(response);
      EXPECT_EQ(response->status, 413);
      EXPECT_EQ(response->param(), "body");
      EXPECT_NE(response->message().find(limit), std::string::npos) << response->message();
    }
  };
  const std::string chunk(64 << 10, 'a');
  const size_t chunked_growth = peak_growth([&] {
    flood([&] {
      RawConnection connection(port());
      std::thread sender([&] {
        if (!connection.send_bytes("POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")) {
          return;
        }
        for (int i = 0; i < 640 && connection.send_bytes(fmt::format("{:x}\r\n{}\r\n", chunk.size(), chunk)); ++i) {
        }
      });
      auto response = connection.read_response();
      sender.join();
      return response;
    });
  });
  const std::string bomb = gzip_of_zeros(64u << 20);
  ASSERT_LT(bomb.size(), 100'000u);
  const size_t gzip_growth = peak_growth([&] {
    flood([&] { return exchange(port(), post("/v1/completions", "Content-Encoding: gzip\r\n", bomb)); });
  });
  // Before this layer a single such gzip body took the server from 189 MB to 1.6 GB.
  EXPECT_LT(chunked_growth, kClients * 2 * kBodyLimit) << chunked_growth;
  EXPECT_LT(gzip_growth, kClients * 2 * kBodyLimit) << gzip_growth;
  EXPECT_TRUE(healthy(port()));
}

TEST_F(HostileClientTest, APromptThatCannotFitIsRefusedBeforeItIsTokenised) {
  const std::string body = json{{"model", "default"}, {"prompt", std::string(12u << 20, 'a')}}.dump();
  const auto response = exchange(port(), post("/v1/completions", "", body));
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 400);
  EXPECT_EQ(response->param(), "prompt");
  // "at least": the bound from min_tokens(), which only the check before tokenisation states.
  EXPECT_NE(response->message().find("at least"), std::string::npos) << response->message();
}

// 500 clients each sending a request head a byte at a time hold no thread: /health answers at once.
TEST_F(HostileClientTest, HealthIsServedWhileFiveHundredSlowClientsAreConnected) {
  constexpr int kSlowClients = 500;
  const std::string head = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  std::vector<std::unique_ptr<RawConnection>> slow;
  for (int i = 0; i < kSlowClients; ++i) slow.push_back(std::make_unique<RawConnection>(port()));
  for (size_t byte = 0; byte < 4; ++byte) {
    for (auto& client : slow) client->send_bytes(head.substr(byte, 1));
    const auto start = Clock::now();
    EXPECT_TRUE(healthy(port()));
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(2));
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  slow.clear();
  EXPECT_TRUE(healthy(port()));
}

TEST_F(HostileClientTest, ASecondServerOnThePortFailsWithAClearError) {
  HttpServerConfig config;
  config.port = port();
  HttpServer second(config);
  try {
    second.bind();
    FAIL() << "a second server bound the port";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("Address already in use"), std::string::npos) << error.what();
  }
  EXPECT_TRUE(healthy(port()));
}

// A bare HttpServer with short limits, serving /health, POST /echo (a worker route) and /throw.
class SmallServer {
 public:
  explicit SmallServer(HttpServerConfig config) : server_(std::move(config)) {
    server_.route("GET", "/health", RunOn::IoThread, false,
                  [](const HttpRequest&, HttpReply& reply) { reply.send(200, "application/json", "{}"); });
    server_.route("POST", "/echo", RunOn::Worker, true,
                  [](const HttpRequest& request, HttpReply& reply) { reply.send(200, "text/plain", request.body); });
    server_.route("GET", "/throw", RunOn::Worker, false,
                  [](const HttpRequest&, HttpReply&) { throw std::runtime_error("secret detail"); });
    port_ = server_.bind();
    thread_ = std::thread([this] { server_.serve(); });
  }
  ~SmallServer() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }

 private:
  HttpServer server_;
  int port_ = 0;
  std::thread thread_;
};

HttpServerConfig short_limits() {
  HttpServerConfig config;
  config.port = 0;
  config.worker_threads = 2;
  config.max_connections = 3;
  config.head_timeout = std::chrono::milliseconds(300);
  config.body_timeout = std::chrono::milliseconds(300);
  return config;
}

TEST(HttpServerTest, AHeadOrBodyPastItsDeadlineGets408AndTheConnectionCloses) {
  SmallServer server(short_limits());
  for (const auto& [sent, part] : {std::pair<std::string, std::string>{"GET /health HTTP/1.1\r\nHost: x\r\n", "headers"},
                                   {"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", "body"}}) {
    SCOPED_TRACE(part);
    RawConnection connection(server.port());
    const auto start = Clock::now();
    connection.send_bytes(sent);
    const auto response = connection.read_response();
    ASSERT_TRUE(response);
    EXPECT_EQ(response->status, 408);
    EXPECT_EQ(response->param(), part);
    EXPECT_LT(Clock::now() - start, std::chrono::seconds(5));
    EXPECT_TRUE(connection.closed_by_server());
  }
  EXPECT_TRUE(healthy(server.port()));
}

TEST(HttpServerTest, AConnectionPastTheLimitGets503NamingTheLimit) {
  SmallServer server(short_limits());
  std::vector<std::unique_ptr<RawConnection>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<RawConnection>(server.port()));
    held.back()->send_bytes("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_TRUE(held.back()->read_response());  // the server has counted it
  }
  const auto refused = exchange(server.port(), "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_NE(refused->message().find("3 connections"), std::string::npos) << refused->message();
  held.clear();
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!healthy(server.port()) && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(healthy(server.port()));
}

TEST(HttpServerTest, AnExceptionFromAHandlerIs500WithTheRequestIdAndNoDetail) {
  SmallServer server(short_limits());
  const auto response = exchange(server.port(), "GET /throw HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(response);
  EXPECT_EQ(response->status, 500);
  const std::string id = RawConnection::header("X-Request-Id", response->head);
  ASSERT_FALSE(id.empty());
  EXPECT_NE(response->message().find(id), std::string::npos) << response->message();
  EXPECT_EQ(response->message().find("secret detail"), std::string::npos) << response->message();
  EXPECT_TRUE(healthy(server.port()));
}

TEST(HttpServerTest, ExpectContinueGets100BeforeTheBody) {
  SmallServer server(short_limits());
  RawConnection connection(server.port());
  connection.send_bytes("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  const auto interim = connection.read_response();
  ASSERT_TRUE(interim);
  EXPECT_EQ(interim->status, 100);
  connection.send_bytes("hello");
  const auto echoed = connection.read_response();
  ASSERT_TRUE(echoed);
  EXPECT_EQ(echoed->body, "hello");
}

}  // namespace
}  // namespace uberlm
