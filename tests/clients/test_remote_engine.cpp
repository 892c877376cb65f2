// core::RemoteEngine against a scripted fake server on loopback: the answer
// shapes other OpenAI-compatible servers send (close-delimited streams without
// [DONE], error objects inside a stream, error bodies), what the request
// carries, and cancel. hostrun's own api_server is covered end to end by
// api_client.sh and bench_serving.sh.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "remote_engine.hpp"

using namespace hostrun;
using json = nlohmann::json;

namespace {

// Answers each connection with `respond(request_text, fd)`; GET /v1/models
// gets `models_reply` (a whole HTTP response), by default one model.
class FakeServer {
 public:
  using Responder = std::function<void(const std::string& request, int fd)>;

  explicit FakeServer(Responder respond, std::string models_reply = default_models_reply())
      : respond_(std::move(respond)), models_reply_(std::move(models_reply)) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    socklen_t size = sizeof address;
    getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &size);
    port_ = ntohs(address.sin_port);
    REQUIRE(listen(listener_, 16) == 0);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeServer() {
    shutdown(listener_, SHUT_RDWR);
    close(listener_);
    thread_.join();
    for (auto& t : handlers_) t.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string last_body() {
    std::lock_guard lock(mutex_);
    return last_request_.substr(last_request_.find("\r\n\r\n") + 4);
  }
  std::string last_request() {
    std::lock_guard lock(mutex_);
    return last_request_;
  }

  static std::string http_reply(std::string_view status_line, std::string_view json_body) {
    return fmt::format("HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                       status_line, json_body.size(), json_body);
  }
  static std::string default_models_reply() {
    return http_reply("200 OK", R"({"object":"list","data":[{"id":"fake-model","object":"model","max_model_len":4096}]})");
  }

  static void send_all(int fd, std::string_view text) {
    while (!text.empty()) {
      ssize_t n = ::send(fd, text.data(), text.size(), MSG_NOSIGNAL);
      if (n <= 0) return;
      text.remove_prefix(size_t(n));
    }
  }

 private:
  void serve() {
    for (;;) {
      int fd = accept(listener_, nullptr, nullptr);
      if (fd < 0) return;
      handlers_.emplace_back([this, fd] { handle(fd); });
    }
  }
  void handle(int fd) {
    std::string request;
    char buffer[4096];
    size_t header_end = std::string::npos;
    while (header_end == std::string::npos) {
      ssize_t n = recv(fd, buffer, sizeof buffer, 0);
      if (n <= 0) return (void)close(fd);
      request.append(buffer, size_t(n));
      header_end = request.find("\r\n\r\n");
    }
    size_t length = 0;
    if (auto at = request.find("Content-Length: "); at != std::string::npos) length = std::stoul(request.substr(at + 16));
    while (request.size() < header_end + 4 + length) {
      ssize_t n = recv(fd, buffer, sizeof buffer, 0);
      if (n <= 0) break;
      request.append(buffer, size_t(n));
    }
    if (request.starts_with("GET /v1/models")) {
      send_all(fd, models_reply_);
    } else {
      {
        std::lock_guard lock(mutex_);
        last_request_ = request;
      }
      respond_(request, fd);
    }
    close(fd);
  }

  Responder respond_;
  std::string models_reply_;
  int listener_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::vector<std::thread> handlers_;
  std::mutex mutex_;
  std::string last_request_;
};

struct Collected {
  std::string text;
  StreamEvent last;
};

Collected run(core::RemoteEngine& engine, GenerationRequest request, uint64_t* id_out = nullptr,
              std::function<void(uint64_t)> after_first_text = {}) {
  std::promise<Collected> done;
  auto result = done.get_future();
  auto collected = std::make_shared<Collected>();
  std::atomic<uint64_t> id{0};
  bool first = true;
  auto submitted = engine.submit(std::move(request), [&](const StreamEvent& e) {
    collected->text += e.text;
    if (!e.text.empty() && first && after_first_text) {
      first = false;
      while (id == 0) std::this_thread::yield();
      after_first_text(id);
    }
    if (e.finish != FinishReason::none) {
      collected->last = e;
      done.set_value(*collected);
    }
  });
  REQUIRE(submitted.has_value());
  id = *submitted;
  if (id_out) *id_out = *submitted;
  REQUIRE(result.wait_for(std::chrono::seconds(20)) == std::future_status::ready);
  return result.get();
}

core::RemoteEngineOptions remote(std::string url, std::string api_key = "") {
  core::RemoteEngineOptions o;
  o.url = std::move(url);
  o.api_key = std::move(api_key);
  return o;
}

GenerationRequest chat(std::string text) {
  GenerationRequest r;
  r.input = std::vector<ChatMessage>{{"user", std::move(text), {}}};
  return r;
}

}  // namespace

TEST_CASE("server URLs") {
  auto u = core::parse_server_url("http://localhost:23333");
  REQUIRE(u.has_value());
  CHECK(u->host == "localhost");
  CHECK(u->port == "23333");
  CHECK(u->base_path == "");
  CHECK(!u->tls);
  u = core::parse_server_url("https://example.org/openai/v1/");
  REQUIRE(u.has_value());
  CHECK(u->tls);
  CHECK(u->port == "443");
  CHECK(u->base_path == "/openai");
  u = core::parse_server_url("http://[::1]:8000");
  REQUIRE(u.has_value());
  CHECK(u->host == "::1");
  CHECK(u->text() == "http://[::1]:8000");
  CHECK(!core::parse_server_url("localhost:23333").has_value());
  CHECK(!core::parse_server_url("http://:80").has_value());
  CHECK(!core::parse_server_url("http://host:99999").has_value());
  CHECK(!core::parse_server_url("http://user:pw@host").has_value());
  CHECK(core::looks_like_url("https://x"));
  CHECK(!core::looks_like_url("/models/llama3"));
}

TEST_CASE("a close-delimited stream without [DONE] (HTTP/1.0 style), with usage") {
  FakeServer server([](const std::string&, int fd) {
    FakeServer::send_all(fd, "HTTP/1.0 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
    FakeServer::send_all(fd, "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n");
    FakeServer::send_all(fd, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n");
    FakeServer::send_all(fd, ": keep-alive\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},");
    FakeServer::send_all(fd, "\"finish_reason\":\"stop\"}]}\n\n");
    FakeServer::send_all(fd, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2}}");
  });
  auto engine = core::RemoteEngine::open(remote(server.url() + "/v1", "k"));
  REQUIRE(engine.has_value());
  CHECK((*engine)->info().model_name == "fake-model");
  CHECK((*engine)->info().session_len == 4096);
  CHECK((*engine)->info().remote);
  CHECK((*engine)->tokenizer() == nullptr);
  GenerationRequest request = chat("hi");
  request.sampling.temperature = 0.5f;
  request.sampling.top_k = 7;
  request.sampling.max_tokens = 9;
  request.sampling.ignore_eos = true;
  request.sampling.stop = {"\n\n"};
  Collected got = run(**engine, std::move(request));
  CHECK(got.text == "Hello");
  CHECK(got.last.finish == FinishReason::stop);
  CHECK(got.last.prompt_tokens == 7);
  CHECK(got.last.completion_tokens == 2);
  CHECK(server.last_request().find("Authorization: Bearer k\r\n") != std::string::npos);
  json body = json::parse(server.last_body());
  CHECK(body["model"] == "fake-model");
  CHECK(body["stream"] == true);
  CHECK(body["stream_options"]["include_usage"] == true);
  CHECK(body["messages"][0]["content"] == "hi");
  CHECK(body["top_k"] == 7);
  CHECK(body["max_tokens"] == 9);
  CHECK(body["ignore_eos"] == true);
  CHECK(body["stop"][0] == "\n\n");
  CHECK(!body.contains("repetition_penalty"));  // neutral values stay out
  CHECK((*engine)->counters().requests_finished == 1);
}

TEST_CASE("completions, an error inside the stream, an error body") {
  std::atomic<int> call{0};
  FakeServer server([&](const std::string& request, int fd) {
    if (call++ == 0) {
      CHECK(request.starts_with("POST /v1/completions"));
      FakeServer::send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n");
      std::string event = "data: {\"choices\":[{\"index\":0,\"text\":\"abc\"}]}\n\n";
      std::string error = "data: {\"object\":\"error\",\"message\":\"the engine fell over\",\"code\":500}\n\n";
      for (const std::string& piece : {event, error}) {
        char size[16];
        snprintf(size, sizeof size, "%zx\r\n", piece.size());
        FakeServer::send_all(fd, std::string(size) + piece + "\r\n");
      }
      FakeServer::send_all(fd, "0\r\n\r\n");
    } else {
      std::string body = R"({"error":{"message":"temperature must be at most 2","type":"invalid_request_error"}})";
      FakeServer::send_all(fd, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: " +
                                   std::to_string(body.size()) + "\r\n\r\n" + body);
    }
  });
  auto engine = core::RemoteEngine::open(remote(server.url()));
  REQUIRE(engine.has_value());
  GenerationRequest text;
  text.input = std::string("Once upon");
  Collected got = run(**engine, std::move(text));
  CHECK(got.text == "abc");
  CHECK(got.last.finish == FinishReason::error);
  CHECK(got.last.error.find("the engine fell over") != std::string::npos);
  got = run(**engine, chat("hi"));
  CHECK(got.last.finish == FinishReason::error);
  CHECK(got.last.error.find("answered 400 Bad Request: temperature must be at most 2") != std::string::npos);
}

TEST_CASE("cancel closes the connection") {
  std::promise<void> closed;
  FakeServer server([&](const std::string&, int fd) {
    FakeServer::send_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
    FakeServer::send_all(fd, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one\"}}]}\n\n");
    char byte;
    while (recv(fd, &byte, 1, 0) > 0) {
    }
    closed.set_value();  // the client hung up
  });
  auto engine = core::RemoteEngine::open(remote(server.url()));
  REQUIRE(engine.has_value());
  Collected got = run(**engine, chat("hi"), nullptr, [&](uint64_t id) { (*engine)->cancel(id); });
  CHECK(got.text == "one");
  CHECK(got.last.finish == FinishReason::cancelled);
  CHECK(closed.get_future().wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  CHECK((*engine)->counters().requests_cancelled == 1);
}

TEST_CASE("an unreachable server") {
  auto engine = core::RemoteEngine::open(remote("http://127.0.0.1:1"));
  REQUIRE(!engine.has_value());
  CHECK(engine.status().code() == ErrorCode::unavailable);  // it may be up later
  CHECK(engine.status().message().find("Connecting to http://127.0.0.1:1 failed") != std::string::npos);
}

TEST_CASE("a server that refuses GET /v1/models: the code follows its answer, not its wording") {
  auto refusing = [](std::string reply) {
    FakeServer server([](const std::string&, int) {}, std::move(reply));
    return core::RemoteEngine::open(remote(server.url())).status();
  };
  Status unauthorized = refusing(FakeServer::http_reply(
      "401 Unauthorized", R"({"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}})"));
  CHECK(unauthorized.code() == ErrorCode::permission_denied);
  CHECK(unauthorized.message().find("answered 401: Incorrect API key provided (the server wants an API key: --api-key)") !=
        std::string::npos);
  CHECK(refusing(FakeServer::http_reply("403 Forbidden", R"({"detail":"no"})")).code() == ErrorCode::permission_denied);
  CHECK(refusing(FakeServer::http_reply("503 Service Unavailable", R"({"object":"error","message":"loading","code":503})"))
            .code() == ErrorCode::unavailable);
  CHECK(refusing(FakeServer::http_reply("429 Too Many Requests", "{}")).code() == ErrorCode::resource_exhausted);
  CHECK(refusing(FakeServer::http_reply("504 Gateway Timeout", "")).code() == ErrorCode::deadline_exceeded);
  CHECK(refusing(FakeServer::http_reply("404 Not Found", R"({"detail":"Not Found"})")).code() == ErrorCode::not_found);
  CHECK(refusing(FakeServer::http_reply(
                     "400 Bad Request", R"({"error":{"message":"too long","code":"context_length_exceeded"}})"))
            .code() == ErrorCode::context_length_exceeded);
  CHECK(refusing(FakeServer::http_reply("418 I'm a teapot", "{}")).code() == ErrorCode::io_error);
}

TEST_CASE("a request the server would refuse for certain fails at submit, with its kind") {
  std::atomic<int> posts{0};
  FakeServer server([&](const std::string&, int) { ++posts; });
  auto engine = core::RemoteEngine::open(remote(server.url()));
  REQUIRE(engine.has_value());
  GenerationRequest request = chat("hi");
  request.sampling.max_tokens = 4096;  // the fake server's max_model_len: no room for any prompt
  auto refused = (*engine)->submit(std::move(request), [](const StreamEvent&) { FAIL("no event for a refused request"); });
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().code() == ErrorCode::context_length_exceeded);
  CHECK(refused.status().message().find("max_tokens is 4096") != std::string::npos);
  CHECK(refused.status().message().find("at most 4096 tokens") != std::string::npos);
  CHECK(posts == 0);
  CHECK((*engine)->counters().requests_submitted == 0);
}
