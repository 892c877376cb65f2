// plugins/http_common and the api_server's request parser, without a model:
// raw sockets against http::Server for what client libraries never send
// (pipelining, HTTP/1.0, 100-continue, oversized bodies, a client that hangs
// up while its answer is pending), and the OpenAI body parser's errors, the
// prompts it hands the engine and how engine refusals reach a client.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "data_url.hpp"
#include "fetch.hpp"
#include "http_server.hpp"
#include "openai_request.hpp"

using namespace hostrun;

namespace {

// A blocking loopback client with a receive timeout, so a broken server fails the test instead of hanging it.
struct RawClient {
  int fd = -1;
  bool peer_closed = false;  // the server closed the connection
  explicit RawClient(uint16_t port) {
    fd = socket(AF_INET, SOCK_STREAM, 0);
    timeval timeout{5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  }
  ~RawClient() {
    if (fd >= 0) close(fd);
  }
  void send_text(const std::string& text) { REQUIRE(::send(fd, text.data(), text.size(), MSG_NOSIGNAL) == ssize_t(text.size())); }
  // Reads until `needle` has arrived `count` times, the peer closes, or 5 s pass.
  std::string read_until(const std::string& needle, int count = 1) {
    std::string got;
    char buffer[4096];
    for (;;) {
      int seen = 0;
      for (size_t at = got.find(needle); at != std::string::npos; at = got.find(needle, at + 1)) ++seen;
      if (seen >= count) return got;
      ssize_t n = recv(fd, buffer, sizeof buffer, 0);
      peer_closed = peer_closed || n == 0;
      if (n <= 0) return got;
      got.append(buffer, size_t(n));
    }
  }
  // Everything until the server closes the connection (or 5 s pass: then peer_closed stays false).
  std::string read_to_close() { return read_until("\x01never sent\x01"); }
};

struct TestServer {
  http::Server server;
  std::atomic<int> aborted{0};
  std::shared_ptr<http::Exchange> parked;  // an exchange left unanswered on purpose
  std::mutex mutex;

  explicit TestServer(http::ServerOptions options = default_options()) : server(std::move(options)) {
    server.route("POST", "/echo", [](std::shared_ptr<http::Exchange> e) {
      http::Response r;
      r.content_type = "text/plain";
      r.body = e->request().body;
      e->respond(std::move(r));
    });
    server.route("GET", "/stream", [](std::shared_ptr<http::Exchange> e) {
      e->begin_stream(200, "text/event-stream");
      // From another thread, as an engine callback would.
      std::thread([e] {
        for (int i = 0; i < 3; ++i) e->write(http::sse_event("piece " + std::to_string(i)));
        e->write(http::sse_event("[DONE]"));
        e->finish();
      }).detach();
    });
    server.route("GET", "/park", [this](std::shared_ptr<http::Exchange> e) {
      e->on_abort([this] { ++aborted; });
      std::lock_guard lock(mutex);
      parked = e;
    });
    REQUIRE(server.start().is_ok());
  }
  static http::ServerOptions default_options() {
    http::ServerOptions o;
    o.address = "127.0.0.1";
    o.port = 0;
    o.threads = 2;
    o.max_body_bytes = 1024;
    return o;
  }
};

bool eventually(const std::function<bool()>& condition) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace

TEST_SUITE("http_server") {
  TEST_CASE("keep-alive, pipelining, HTTP/1.0, 100-continue, limits, routing") {
    TestServer t;
    {
      RawClient c(t.server.port());
      // Two requests in one write: both answered, in order, on one connection.
      c.send_text("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n"
                  "onePOST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  "Content-Length: 3\r\n\r\ntwo");
      std::string got = c.read_until("two");  // the second body, so both answers are in
      CHECK(got.find("HTTP/1.1 200") < got.find("one"));
      CHECK(got.find("one") < got.find("HTTP/1.1 200", got.find("one")));
      CHECK(got.find("one") < got.find("two"));
      // 100-continue: the interim answer comes before the body is sent.
      c.send_text("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
      CHECK(c.read_until("\r\n\r\n").starts_with("HTTP/1.1 100 Continue"));
      c.send_text("hello");
      CHECK(c.read_until("hello").find("200 OK") != std::string::npos);
    }
    {
      RawClient c(t.server.port());
      c.send_text("POST /echo HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nhi");
      std::string got = c.read_until("\r\n\r\nhi");
      CHECK(got.find("Connection: close") != std::string::npos);
    }
    {
      RawClient c(t.server.port());
      c.send_text("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n" +
                  std::string(5000, 'x'));
      CHECK(c.read_until("}}").starts_with("HTTP/1.1 413"));
    }
    {
      RawClient c(t.server.port());
      c.send_text("GARBAGE\r\n\r\n");
      CHECK(c.read_until("}}").starts_with("HTTP/1.1 400"));
    }
    {
      RawClient c(t.server.port());
      c.send_text("GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n");
      CHECK(c.read_until("}}").starts_with("HTTP/1.1 404"));
      c.send_text("GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
      std::string got = c.read_until("}}");
      CHECK(got.starts_with("HTTP/1.1 405"));
      CHECK(got.find("Allow: POST") != std::string::npos);
    }
    CHECK(eventually([&] { return t.server.stats().connections_open == 0; }));
  }

  TEST_CASE("a chunked event stream written from another thread") {
    TestServer t;
    RawClient c(t.server.port());
    c.send_text("GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n");
    std::string got = c.read_until("0\r\n\r\n");
    CHECK(got.find("Transfer-Encoding: chunked") != std::string::npos);
    CHECK(got.find("data: piece 0\n\n") < got.find("data: piece 2\n\n"));
    CHECK(got.find("data: [DONE]") != std::string::npos);
  }

  TEST_CASE("a client that hangs up while its answer is pending aborts the exchange") {
    TestServer t;
    {
      RawClient c(t.server.port());
      c.send_text("GET /park HTTP/1.1\r\nHost: localhost\r\n\r\n");
      REQUIRE(eventually([&] {
        std::lock_guard lock(t.mutex);
        return t.parked != nullptr;
      }));
    }
    CHECK(eventually([&] { return t.aborted.load() == 1; }));
    CHECK(t.parked->aborted());
    CHECK_FALSE(t.parked->write("late"));
    t.parked->respond({});  // ignored, no crash
    CHECK(eventually([&] { return t.server.stats().connections_open == 0; }));
  }

  TEST_CASE("stop() aborts pending exchanges and closes connections") {
    TestServer t;
    RawClient c(t.server.port());
    c.send_text("GET /park HTTP/1.1\r\nHost: localhost\r\n\r\n");
    REQUIRE(eventually([&] {
      std::lock_guard lock(t.mutex);
      return t.parked != nullptr;
    }));
    t.server.stop();
    t.server.join();
    CHECK(t.aborted.load() == 1);
    CHECK(t.server.stats().connections_open == 0);
    t.parked->write("after the server stopped");  // dropped, no crash
  }

  // What `serve gradio` does on SIGTERM: the signal's thread calls stop()
  // while the main thread waits in join(). join() used to wake as soon as
  // stop() was asked for and could finish its last poll before stop() had
  // queued its work; that work then stayed in the io_context the server owns,
  // holding the server, and nothing was ever freed (LeakSanitizer found it).
  // A route's captured object tells whether the server was freed.
  TEST_CASE("stop() from another thread while join() waits: everything the server held is freed") {
    for (int round = 0; round < 1000; ++round) {
      auto token = std::make_shared<int>(round);
      std::weak_ptr<int> watched = token;
      {
        http::Server server(TestServer::default_options());
        server.route("GET", "/", [token](std::shared_ptr<http::Exchange> e) { e->respond({}); });
        token.reset();
        REQUIRE(server.start().is_ok());
        std::thread stopper([&server] { server.stop(); });
        server.join();
        stopper.join();
      }
      INFO("round " << round);
      REQUIRE(watched.expired());
    }
  }

  TEST_CASE("framing a proxy could read differently is 400, and the connection closes unread") {
    TestServer t;
    // If the server ever reads this as a request, it answers 404 naming the path.
    const std::string hidden = "GET /hidden-request HTTP/1.1\r\nHost: localhost\r\n\r\n";
    const std::string chunked_hidden = fmt::format("{:x}\r\n{}\r\n0\r\n\r\n", hidden.size(), hidden);
    const std::string post = "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";
    struct Case {
      const char* name;
      std::string bytes;
      const char* named;  // what the 400's message must name
    };
    const Case cases[] = {
        {"gzip", post + "Transfer-Encoding: gzip\r\n\r\n" + hidden, "Transfer-Encoding"},
        {"identity", post + "Transfer-Encoding: identity\r\n\r\n" + hidden, "Transfer-Encoding"},
        {"chunked, gzip", post + "Transfer-Encoding: chunked, gzip\r\n\r\n" + hidden, "Transfer-Encoding"},
        {"gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked_hidden, "Transfer-Encoding"},
        {"chunked, chunked", post + "Transfer-Encoding: chunked, chunked\r\n\r\n" + chunked_hidden,
         "Transfer-Encoding"},
        {"two fields, gzip then chunked", post + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" +
         chunked_hidden, "Transfer-Encoding"},
        {"two chunked fields", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" +
         chunked_hidden, "Transfer-Encoding"},
        {"gzip beside Content-Length", post + "Transfer-Encoding: gzip\r\nContent-Length: 0\r\n\r\n" + hidden,
         "Transfer-Encoding"},
        {"chunked, then Content-Length", post + fmt::format("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
                                                             chunked_hidden.size()) + chunked_hidden, "Content-Length"},
        {"Content-Length, then chunked", post + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" +
         chunked_hidden, "Transfer-Encoding"},
        {"chunked in HTTP/1.0", "POST /echo HTTP/1.0\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
         "\r\n\r\n" + chunked_hidden, "HTTP/1.0"},
        {"two Content-Length fields", post + "Content-Length: 0\r\nContent-Length: 0\r\n\r\n" + hidden,
         "Content-Length"},
        {"a Content-Length list", post + "Content-Length: 0, 0\r\n\r\n" + hidden, "Content-Length"},
        {"chunked folded onto a second line", post + "Transfer-Encoding:\r\n chunked\r\n\r\n" + chunked_hidden,
         "line folding"},
        {"a folded Content-Length", post + "Content-Length:\r\n\t0\r\n\r\n" + hidden, "line folding"},
        {"two Host fields", "GET /stream HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n" + hidden, "Host"},
        {"no Host in HTTP/1.1", "GET /stream HTTP/1.1\r\n\r\n" + hidden, "Host"},
    };
    for (const auto& c : cases) {
      std::string name = c.name;
      CAPTURE(name);
      RawClient client(t.server.port());
      client.send_text(c.bytes);
      std::string got = client.read_to_close();
      CHECK(got.starts_with("HTTP/1.1 400"));
      CHECK(got.find(c.named, got.find("\r\n\r\n")) != std::string::npos);
      CHECK(got.find("Connection: close") != std::string::npos);
      CHECK(client.peer_closed);
      CHECK(got.find("hidden-request") == std::string::npos);
      CHECK(got.find("Server: hostrun", got.find("Server: hostrun") + 1) == std::string::npos);  // one response
    }
    // What stays accepted: exactly "chunked" (any case, with spaces), and HTTP/1.0 without Host.
    RawClient client(t.server.port());
    client.send_text(post + "Transfer-Encoding:  Chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    CHECK(client.read_until("abc").starts_with("HTTP/1.1 200"));
    client.send_text("POST /echo HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\nok");
    CHECK(client.read_to_close().starts_with("HTTP/1.1 200"));
    CHECK(eventually([&] { return t.server.stats().connections_open == 0; }));
  }

  TEST_CASE("Host, Origin and Content-Type decide before any route") {
    http::ServerOptions options = TestServer::default_options();
    options.allowed_hosts = {"chat.example.com"};
    options.cors.allow_origins = {"https://app.example.com"};
    TestServer t(options);
    const std::string port = std::to_string(t.server.port());
    auto status_of = [&](const std::string& head, const std::string& body = "{}") {
      RawClient client(t.server.port());
      client.send_text(head + fmt::format("Content-Length: {}\r\nConnection: close\r\n\r\n", body.size()) + body);
      std::string got = client.read_to_close();
      return got.substr(0, got.find("\r\n"));
    };
    auto post = [&](const std::string& host, const std::string& extra) {
      return "POST /echo HTTP/1.1\r\nHost: " + host + "\r\n" + extra;
    };
    const std::string json = "Content-Type: application/json\r\n";
    // Host: names this server answers to, addresses, and nothing else.
    CHECK(status_of(post("localhost:" + port, json)) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("127.0.0.1:" + port, json)) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("[::1]:" + port, json)) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("app.localhost", json)) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("Chat.Example.COM:443", json)) == "HTTP/1.1 200 OK");
    char machine[256] = {};
    REQUIRE(gethostname(machine, sizeof machine - 1) == 0);
    CHECK(status_of(post(machine, json)) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("rebind.attacker.test:" + port, json)) == "HTTP/1.1 403 Forbidden");
    CHECK(status_of(post("chat.example.com.attacker.test", json)) == "HTTP/1.1 403 Forbidden");
    CHECK(status_of(post("bad host", json)) == "HTTP/1.1 400 Bad Request");
    // Origin: the server's own page, the listed origin; not another site, not a sandboxed "null".
    CHECK(status_of(post("localhost:" + port, json + "Origin: http://localhost:" + port + "\r\n")) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("localhost:" + port, json + "Origin: https://app.example.com\r\n")) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("localhost:" + port, json + "Origin: https://evil.test\r\n")) == "HTTP/1.1 403 Forbidden");
    CHECK(status_of(post("localhost:" + port, json + "Origin: null\r\n")) == "HTTP/1.1 403 Forbidden");
    CHECK(status_of("OPTIONS /echo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.test\r\n"
                    "Access-Control-Request-Method: POST\r\n", "") == "HTTP/1.1 403 Forbidden");
    CHECK(status_of("OPTIONS /echo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://app.example.com\r\n"
                    "Access-Control-Request-Method: POST\r\n", "") == "HTTP/1.1 204 No Content");
    // Content-Type of a POST: JSON only, parameters and case aside.
    CHECK(status_of(post("localhost", "Content-Type: Application/JSON; charset=utf-8\r\n")) == "HTTP/1.1 200 OK");
    CHECK(status_of(post("localhost", "Content-Type: text/plain\r\n")) == "HTTP/1.1 415 Unsupported Media Type");
    CHECK(status_of(post("localhost", "Content-Type: application/x-www-form-urlencoded\r\n")) ==
          "HTTP/1.1 415 Unsupported Media Type");
    CHECK(status_of(post("localhost", "")) == "HTTP/1.1 415 Unsupported Media Type");
    CHECK(status_of(post("localhost", "Content-Type: application/jsonx\r\n")) == "HTTP/1.1 415 Unsupported Media Type");
    {
      // A chunked body's trailer fields are not headers: a Content-Type there does not count.
      RawClient trailer(t.server.port());
      trailer.send_text("POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "2\r\n{}\r\n0\r\nContent-Type: application/json\r\n\r\n");
      CHECK(trailer.read_until("}}").starts_with("HTTP/1.1 415"));
    }
    // The refusal says what was found and what would be accepted; every answer carries nosniff.
    RawClient client(t.server.port());
    client.send_text("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi");
    std::string got = client.read_until("}}");
    CHECK(got.find("X-Content-Type-Options: nosniff") != std::string::npos);
    CHECK(got.find("found 'text/plain'") != std::string::npos);
    CHECK(got.find("application/json") != std::string::npos);
    // A refusal of access leaves the connection usable: the next request on it is answered.
    client.send_text("GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n");
    CHECK(client.read_until("[DONE]").find("data: [DONE]") != std::string::npos);
  }

  TEST_CASE("allow_origins '*' with allow_credentials is warned about at start") {
    struct Lines : LogSink {
      std::mutex mutex;
      std::vector<std::string> warnings;
      void write(LogLevel level, std::string_view, std::string_view message) noexcept override {
        std::lock_guard lock(mutex);
        if (level == LogLevel::warning) warnings.emplace_back(message);
      }
      LogLevel level() const noexcept override { return LogLevel::warning; }
    } lines;
    auto warned_with = [&](std::vector<std::string> origins, bool credentials) {
      lines.warnings.clear();
      http::ServerOptions options = TestServer::default_options();
      options.cors.allow_origins = std::move(origins);
      options.cors.allow_credentials = credentials;
      options.log = Logger(&lines, "test");
      TestServer t(options);
      return lines.warnings.size() == 1 && lines.warnings[0].find("allow_credentials") != std::string::npos;
    };
    CHECK(warned_with({"*"}, true));
    CHECK_FALSE(warned_with({"*"}, false));
    CHECK_FALSE(warned_with({"https://app.example.com"}, true));
  }

  TEST_CASE("json_error and sse_event") {
    http::Response r = http::json_error(400, "bad \"x\"", "invalid_request_error", "x");
    CHECK(r.status == 400);
    CHECK(r.body == R"({"error":{"message":"bad \"x\"","type":"invalid_request_error","param":"x","code":null}})");
    CHECK(http::sse_event("a\nb") == "data: a\ndata: b\n\n");
  }
}

TEST_SUITE("openai_request") {
  using api::ApiException;
  auto param_of = [](auto&& parse, const std::string& body) -> std::string {
    try {
      parse(body);
    } catch (const ApiException& e) {
      return e.error.param.empty() ? "(none)" : e.error.param;
    }
    return "(accepted)";
  };

  TEST_CASE("chat bodies") {
    auto chat = [](const std::string& b) { return api::parse_chat_request(b); };
    auto r = api::parse_chat_request(
        R"({"model":"m","messages":[{"role":"developer","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null}],
            "temperature":0,"top_k":-1,"max_tokens":16.0,"max_completion_tokens":8,"stop":"x","n":2,"seed":-1,
            "stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2,"unknown_field":1})");
    CHECK(r.messages.size() == 3);
    CHECK(r.messages[0].role == "system");
    CHECK(r.messages[1].content == "ab");
    CHECK(r.sampling.top_k == 0);
    CHECK(r.sampling.max_tokens == 8);
    CHECK(r.sampling.stop == std::vector<std::string>{"x"});
    CHECK(*r.sampling.seed == UINT64_MAX);
    CHECK(r.include_usage);
    CHECK(r.sampling.top_logprobs == 2);
    CHECK(param_of(chat, "{") == "(none)");
    CHECK(param_of(chat, "[]") == "(none)");
    CHECK(param_of(chat, R"({"messages":[{"role":"user","content":"x"}],"temperature":"1"})") == "temperature");
    CHECK(param_of(chat, R"({"messages":[{"role":"user","content":"x"}],"top_p":0})") == "top_p");
    CHECK(param_of(chat, R"({"messages":[{"role":"tool","content":"x"}]})") == "messages[0].role");
    CHECK(param_of(chat, R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})") == "messages[0].content[0].text");
    CHECK(param_of(chat, R"({"messages":[{"role":"user","content":"x"}],"stop":["a",1]})") == "stop[1]");
  }

  TEST_CASE("chat bodies with images: data: URLs only, checked by their bytes") {
    auto chat = [](const std::string& b) { return api::parse_chat_request(b); };
    // A 1 x 1 GIF, as a client would send it.
    const std::string gif = "R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=";
    auto r = chat(R"({"messages":[{"role":"user","content":[{"type":"text","text":"what is "},)"
                  R"({"type":"image_url","image_url":{"url":"data:image/gif;base64,)" + gif + R"("}},)"
                  R"({"type":"text","text":"this?"},{"type":"image_url","image_url":"data:image/png;base64,)" + gif + R"("}]}]})");
    REQUIRE(r.messages.size() == 1);
    CHECK(r.messages[0].content == "what is this?");
    REQUIRE(r.messages[0].images.size() == 2);
    CHECK(r.messages[0].images[0].mime_type == "image/gif");
    CHECK(r.messages[0].images[1].mime_type == "image/gif");  // the bytes say so, whatever the URL claims
    CHECK(r.messages[0].images[0].bytes.size() == 35);
    CHECK(r.messages[0].images[0].bytes[0] == 'G');
    const auto image = [](const std::string& url, const char* role = "user") {
      return std::string(R"({"messages":[{"role":")") + role + R"(","content":[{"type":"image_url","image_url":{"url":")" +
             url + R"("}}]}]})";
    };
    const std::string url_param = "messages[0].content[0].image_url.url";
    CHECK(param_of(chat, image("https://example.com/cat.png")) == url_param);
    CHECK(param_of(chat, image("file:///etc/passwd")) == url_param);
    CHECK(param_of(chat, image("data:image/gif," + gif)) == url_param);          // not base64
    CHECK(param_of(chat, image("data:image/gif;base64,R0lGOD!h")) == url_param);  // not the alphabet
    CHECK(param_of(chat, image("data:image/png;base64,aGVsbG8=")) == url_param);  // "hello": no image
    CHECK(param_of(chat, image("data:image/gif;base64," + gif, "system")) == "messages[0].content[0].type");
    CHECK(param_of(chat, R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})") ==
          "messages[0].content[0].image_url");
    CHECK(param_of(chat, R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":5}}]}]})") ==
          url_param);
  }

  TEST_CASE("image URL fetching: which hosts, before anything is contacted") {
    http::FetchLimits limits;
    limits.allowed_hosts = {"images.example.com", "::1"};
    CHECK(http::fetch_allowed("http://images.example.com/a.png", limits));
    CHECK(http::fetch_allowed("https://IMAGES.example.com:8443/a.png?x=1", limits));
    CHECK(http::fetch_allowed("http://[::1]:8080/a.png", limits));
    CHECK_FALSE(http::fetch_allowed("http://example.com/a.png", limits));
    CHECK_FALSE(http::fetch_allowed("http://images.example.com.evil.test/a.png", limits));
    CHECK_FALSE(http::fetch_allowed("http://user@images.example.com/a.png", limits));  // no credentials
    CHECK_FALSE(http::fetch_allowed("ftp://images.example.com/a.png", limits));
    CHECK_FALSE(http::fetch_allowed("http://images.example.com:99999/a.png", limits));
    CHECK_FALSE(http::fetch_allowed("http://images.example.com/a b.png", limits));
    CHECK_FALSE(http::fetch_allowed("http://images.example.com/a.png", http::FetchLimits{}));  // nothing listed
    http::FetchLimits any;
    any.allowed_hosts = {"*"};
    CHECK(http::fetch_allowed("http://anything.test/", any));
    auto refused = http::fetch_url("http://example.com/a.png", limits);
    CHECK(refused.status().code() == ErrorCode::permission_denied);
    CHECK(refused.status().message().find("'example.com'") != std::string::npos);
  }

  TEST_CASE("base64 and data: URLs") {
    auto bytes = http::decode_base64("aGVsbG8gd29ybGQ=");
    REQUIRE(bytes.has_value());
    CHECK(std::string(bytes->begin(), bytes->end()) == "hello world");
    CHECK(http::decode_base64("aGVsbG8gd29ybGQ").has_value());  // padding may be left out
    CHECK(http::decode_base64("").value().empty());
    CHECK_FALSE(http::decode_base64("aGVsbG8gd29ybGR=").has_value());  // stray bits in the last character
    CHECK_FALSE(http::decode_base64("a").has_value());                 // no encoder writes one character
    CHECK_FALSE(http::decode_base64("aGVs\nbG8=").has_value());
    CHECK(http::decode_base64("aG=sbG8=").status().message().find("offset 2") != std::string::npos);
    auto url = http::parse_data_url("DATA:Image/PNG;charset=x;base64,aGk=", 100);
    REQUIRE(url.has_value());
    CHECK(url->media_type == "image/png");
    CHECK(url->bytes.size() == 2);
    CHECK(http::parse_data_url("data:image/png;base64,aGVsbG8gd29ybGQ=", 10).status().code() ==
          ErrorCode::resource_exhausted);
    CHECK(http::parse_data_url("data:;base64,aGk=", 10).value().media_type.empty());
    CHECK_FALSE(http::parse_data_url("data:image/png;base64", 10).has_value());
    CHECK_FALSE(http::parse_data_url("http://x/data:;base64,aGk=", 10).has_value());
  }

  TEST_CASE("completion bodies") {
    auto completion = [](const std::string& b) { return api::parse_completion_request(b); };
    auto r = api::parse_completion_request(R"({"prompt":[[1,2],"text"],"echo":true,"logprobs":0})");
    CHECK(r.prompts.size() == 2);
    CHECK(std::get<std::vector<TokenId>>(r.prompts[0]) == std::vector<TokenId>{1, 2});
    CHECK(r.sampling.max_tokens == 16);  // OpenAI's default for completions
    CHECK(r.sampling.top_logprobs == 0);
    CHECK(param_of(completion, R"({"prompt":[-1]})") == "prompt[0]");
    CHECK(param_of(completion, R"({"prompt":"x","n":100,"max_tokens":1})") == "(accepted)");
    CHECK(param_of(completion, R"({"prompt":["a","b"],"n":100})") == "n");
    CHECK(param_of(completion, R"({"prompt":"x","max_tokens":1e400})") == "(none)");
  }
  // Records how it was asked to encode: BOS (id 1000) unless told not to,
  // "<eot>" as one id (1001) only when special tokens are parsed, otherwise
  // one id per byte; a 0xff byte is refused.
  class OptionsTokenizer final : public Tokenizer {
   public:
    Status encode(std::string_view text, const EncodeOptions& options, std::vector<TokenId>& ids) const noexcept override {
      if (text.find('\xff') != std::string_view::npos) return {ErrorCode::invalid_argument, "not UTF-8"};
      if (options.add_bos.value_or(true)) ids.push_back(1000);
      for (size_t i = 0; i < text.size();) {
        if (options.parse_special && text.substr(i).starts_with("<eot>")) {
          ids.push_back(1001);
          i += 5;
        } else {
          ids.push_back(TokenId(uint8_t(text[i++])));
        }
      }
      return {};
    }
    Status decode(std::span<const TokenId>, const DecodeOptions&, std::string&) const noexcept override { return {}; }
    PluginPtr<IncrementalDecoder> incremental_decoder(const DecodeOptions&) const noexcept override { return nullptr; }
    int32_t vocab_size() const noexcept override { return 1002; }
    std::optional<TokenId> token_to_id(std::string_view) const noexcept override { return std::nullopt; }
    std::string id_to_token(TokenId) const noexcept override { return {}; }
    bool is_special(TokenId id) const noexcept override { return id >= 1000; }
    SpecialTokenIds special_tokens() const noexcept override { return {}; }
  };

  TEST_CASE("a completion's text prompts reach the engine as ids, tokenized once as the engine would") {
    OptionsTokenizer tokenizer;
    auto r = api::parse_completion_request(R"({"prompt":["ab<eot>", [5, 6, 7], "\u00ff"]})");
    r.prompts.push_back(std::string("\xff"));  // JSON cannot carry it; a tokenizer may refuse other text too
    auto prompts = api::engine_prompts(&tokenizer, r);
    REQUIRE(prompts.size() == 4);
    CHECK(std::get<std::vector<TokenId>>(prompts[0]) == std::vector<TokenId>{1000, 'a', 'b', 1001});
    CHECK(std::get<std::vector<TokenId>>(prompts[1]) == std::vector<TokenId>{5, 6, 7});
    CHECK(std::get<std::vector<TokenId>>(prompts[2]) == std::vector<TokenId>{1000, 0xc3, 0xbf});
    CHECK(std::get<std::string>(prompts[3]) == "\xff");  // left for the engine to refuse with its reason
    // A remote engine has no tokenizer: the server it talks to tokenizes.
    auto untouched = api::engine_prompts(nullptr, r);
    CHECK(std::get<std::string>(untouched[0]) == "ab<eot>");
    CHECK(std::get<std::vector<TokenId>>(untouched[1]) == std::vector<TokenId>{5, 6, 7});
  }

  TEST_CASE("a text prompt whose bytes cannot fit the session is refused before tokenizing") {
    auto refusal = [](int32_t session_len, size_t longest, const api::ParsedRequest& r) -> std::optional<api::ApiError> {
      try {
        api::refuse_unfittable_prompts(session_len, longest, r);
      } catch (const ApiException& e) {
        return e.error;
      }
      return std::nullopt;
    };
    // 4 bytes a token at most: 32 bytes are at least 8 tokens, 29 bytes at least 8 too, 28 bytes 7.
    auto over = api::parse_completion_request(R"({"prompt":["ok", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]})");
    auto refused = refusal(8, 4, over);
    REQUIRE(refused);
    CHECK(refused->status == 400);
    CHECK(refused->param == "prompt");
    CHECK(refused->code == "context_length_exceeded");
    CHECK(refused->message.find("your prompt of 29 bytes is at least 8 tokens") != std::string::npos);
    CHECK_FALSE(refusal(8, 4, api::parse_completion_request(R"({"prompt":"aaaaaaaaaaaaaaaaaaaaaaaaaaaa"})")));
    CHECK_FALSE(refusal(0, 4, over));  // session length unknown
    CHECK_FALSE(refusal(8, 0, over));  // no tokenizer to bound it
    CHECK_FALSE(refusal(8, 4, api::parse_completion_request(R"({"prompt":[1,2,3,4,5,6,7,8,9]})")));  // ids: counted exactly later
  }

  TEST_CASE("prompt + max_tokens over the session length: exact for completions, certain only for chat") {
    OptionsTokenizer tokenizer;
    auto refusal = [](int32_t session_len, const api::ParsedRequest& r,
                      const std::vector<api::PromptInput>& prompts) -> std::optional<api::ApiError> {
      try {
        api::check_context_length(session_len, r, prompts);
      } catch (const ApiException& e) {
        return e.error;
      }
      return std::nullopt;
    };
    auto completion = api::parse_completion_request(R"({"prompt":"abc","max_tokens":5})");
    auto ids = api::engine_prompts(&tokenizer, completion);  // BOS + 3: 4 tokens
    CHECK_FALSE(refusal(9, completion, ids));
    auto over = refusal(8, completion, ids);
    REQUIRE(over);
    CHECK(over->status == 400);
    CHECK(over->type == "invalid_request_error");
    CHECK(over->param == "prompt");
    CHECK(over->code == "context_length_exceeded");
    CHECK(over->message.find("maximum context length is 8 tokens") != std::string::npos);
    CHECK(over->message.find("you requested 9 tokens (4 in the prompt, 5 for the completion)") != std::string::npos);
    CHECK_FALSE(refusal(0, completion, ids));  // session length unknown
    // The second of two prompts is over.
    auto two = api::parse_completion_request(R"({"prompt":[[1], [1, 2, 3, 4, 5, 6, 7, 8]],"max_tokens":1})");
    auto second = refusal(8, two, api::engine_prompts(&tokenizer, two));
    REQUIRE(second);
    CHECK(second->message.find("(8 in the prompt, 1 for the completion)") != std::string::npos);

    auto chat = api::parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":8})");
    CHECK_FALSE(refusal(9, chat, {}));  // may fit: the engine caps the reply at the session length
    auto no_room = refusal(8, chat, {});
    REQUIRE(no_room);
    CHECK(no_room->param == "messages");
    CHECK(no_room->code == "context_length_exceeded");
    CHECK(no_room->message.find("at least 9 tokens (at least 1 in the messages, 8 for the completion)") !=
          std::string::npos);
    auto unbounded = api::parse_chat_request(R"({"messages":[{"role":"user","content":"hi"}]})");
    CHECK_FALSE(refusal(2, unbounded, {}));  // no max_tokens: up to the session length
  }

  TEST_CASE("engine refusals reach the client by their code") {
    auto seen = [](ErrorCode code, bool chat = true) { return api::engine_refusal(Status(code, "why"), chat); };
    auto length = seen(ErrorCode::context_length_exceeded);
    CHECK(length.status == 400);
    CHECK(length.type == "invalid_request_error");
    CHECK(length.code == "context_length_exceeded");
    CHECK(length.param == "messages");
    CHECK(length.message == "why");
    CHECK(seen(ErrorCode::context_length_exceeded, false).param == "prompt");
    CHECK(seen(ErrorCode::invalid_argument).status == 400);
    CHECK(seen(ErrorCode::invalid_argument).code.empty());
    CHECK(seen(ErrorCode::unsupported).status == 400);
    CHECK(seen(ErrorCode::permission_denied).status == 403);
    CHECK(seen(ErrorCode::resource_exhausted).status == 429);
    for (ErrorCode code : {ErrorCode::unavailable, ErrorCode::cancelled, ErrorCode::out_of_memory}) {
      CHECK(seen(code).status == 503);
      CHECK(seen(code).type == "server_error");
    }
    CHECK(seen(ErrorCode::deadline_exceeded).status == 504);
    CHECK(seen(ErrorCode::internal).status == 500);
    CHECK(seen(ErrorCode::io_error).type == "server_error");
  }
}
