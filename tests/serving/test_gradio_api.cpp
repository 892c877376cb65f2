// plugins/gradio's Gradio API against a scripted engine (no model): the
// engine's timing, which the tests through real servers cannot choose.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <hostrun/json_bounds.hpp>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "gradio_api.hpp"
#include "http_server.hpp"

using namespace hostrun;

namespace {

// Holds every callback it is given and calls none: the test decides when an event comes.
class ScriptedEngine final : public EngineHandle {
 public:
  Result<uint64_t> submit(GenerationRequest, StreamCallback on_event) noexcept override {
    std::lock_guard lock(mutex);
    callbacks.push_back(std::move(on_event));
    return uint64_t(callbacks.size());
  }
  void cancel(uint64_t request_id) noexcept override {
    std::lock_guard lock(mutex);
    cancelled.push_back(request_id);
  }
  EngineInfo info() const noexcept override { return {"scripted", 512, true, false}; }
  EngineCounters counters() const noexcept override { return {}; }
  const Tokenizer* tokenizer() const noexcept override { return nullptr; }

  std::mutex mutex;
  std::vector<StreamCallback> callbacks;
  std::vector<uint64_t> cancelled;
};

// Sends `bytes` on a loopback connection to `port` and returns what comes back
// before the server closes it (or 5 s pass).
std::string exchange(uint16_t port, const std::string& bytes) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  REQUIRE(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == ssize_t(bytes.size()));
  std::string got;
  char buffer[4096];
  for (ssize_t n; (n = recv(fd, buffer, sizeof buffer, 0)) > 0;) got.append(buffer, size_t(n));
  close(fd);
  return got;
}

}  // namespace

TEST_SUITE("gradio_api") {
  // A cancelled job's last event comes when the engine gets to it; a remote
  // engine's, when its connection to the server ends, which at shutdown can
  // be after the frontend has destroyed its Gradio API (adversarial_http
  // caught it in the ASan build: a heap-use-after-free in the callback). The
  // event must then be dropped. Without the fix this is a use after free,
  // which the ASan suite reports; the Release build cannot see it.
  TEST_CASE("a job's last event arriving after the Gradio API is gone is dropped") {
    ScriptedEngine engine;
    {
      http::ServerOptions options;
      options.address = "127.0.0.1";
      options.port = 0;
      http::Server server(options);
      gradio::GradioApi api(engine, gradio::ChatDefaults{}, gradio::JobLimits{},
                            network_json_limits(options.max_body_bytes), Logger{});
      http::WorkerPool workers(1, Logger{});
      api.add_routes(server, workers);
      REQUIRE(server.start().is_ok());
      std::string body = R"({"data":["Hello",[],"",0,1,64],"fn_index":1,"session_hash":"late"})";
      std::string answer = exchange(server.port(), "POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                   "Content-Type: application/json\r\nConnection: close\r\n"
                                                   "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body);
      REQUIRE(answer.starts_with("HTTP/1.1 200"));
      // The join submits after answering.
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      for (;;) {
        {
          std::lock_guard lock(engine.mutex);
          if (!engine.callbacks.empty()) break;
        }
        REQUIRE(std::chrono::steady_clock::now() < deadline);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      server.stop();
      server.join();
      workers.join();
      api.stop();
      std::lock_guard lock(engine.mutex);
      CHECK(engine.cancelled == std::vector<uint64_t>{1});
    }
    StreamEvent last;
    last.request_id = 1;
    last.finish = FinishReason::cancelled;
    engine.callbacks.at(0)(last);
  }
}
