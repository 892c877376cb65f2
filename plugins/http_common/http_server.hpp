// A small asynchronous HTTP/1.1 server for the web frontends (api_server, gradio).
//
// One io_context, a few threads, no thread per connection: a connection costs a
// socket, a parser and a strand, so thousands of long-lived streams are cheap.
// Every request that passes request_rules.hpp (framing, Host, Origin,
// Content-Type) becomes an Exchange. A handler may answer at once, or keep the
// Exchange and answer later from any thread (an engine callback), or stream a
// chunked body (Server-Sent Events) piece by piece. Work for a connection is
// serialized on its strand: Exchange::post() runs code there, so per-request
// state touched only from posted code needs no lock.
//
// Backpressure: a streamed body is queued per connection and written one batch
// at a time (pieces queued during a write go out together in the next one).
// A client that stops reading lets the queue grow up to
// ServerOptions::max_stream_buffer_bytes; then the connection is dropped and the
// Exchange's abort callback runs, so a stalled reader cannot hold memory or an
// engine slot forever. A client that disconnects is noticed while its response
// is pending (the socket is watched for EOF, and under TLS for a close_notify),
// not only at the next write.
//
// With ServerOptions::tls every connection first completes a TLS handshake
// (within the idle timeout) and then behaves exactly like a plain one.
//
// The header has no Boost in it; the Beast/Asio code lives in http_server.cpp.
// This library is linked into plugins (built with hidden visibility), never
// into the host.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <hostrun/log.hpp>
#include <hostrun/status.hpp>

#include "ascii.hpp"
#include "tls.hpp"

namespace hostrun::http {

struct Header {
  std::string name;  // lower-case in a Request; as given in a Response
  std::string value;
};

struct Request {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent: path + "?" + query
  std::string path;    // without the query
  std::string query;   // after "?", not decoded
  std::vector<Header> headers;
  std::string body;
  std::string remote_address;
  std::chrono::steady_clock::time_point received;  // when the whole request had been read

  // The first header of that name (case-insensitive), or nullptr.
  const std::string* header(std::string_view name) const noexcept {
    for (const auto& h : headers)
      if (iequals(h.name, name)) return &h.value;
    return nullptr;
  }
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<Header> headers;  // extra headers
};

// One request and its reply. Shared by the server and whoever answers; every
// method is safe from any thread. Exactly one of respond() or begin_stream()
// takes effect; later calls are ignored.
class Exchange {
 public:
  virtual ~Exchange() = default;
  virtual const Request& request() const noexcept = 0;

  // Sends a complete response.
  virtual void respond(Response response) = 0;

  // Starts a chunked response; the body follows through write() and ends with finish().
  virtual void begin_stream(int status, std::string content_type, std::vector<Header> headers = {}) = 0;
  // Queues a piece of the streamed body. false: the client is gone (or was
  // dropped for not reading), so the caller may stop producing.
  virtual bool write(std::string piece) = 0;
  // Ends the streamed body; the connection then reads the next request (keep-alive).
  virtual void finish() = 0;

  // `on_abort` runs once, on the connection's strand, when the client goes away
  // (or the server stops) before the response was completely written. Set it
  // before answering; it is dropped once the response is complete.
  virtual void on_abort(std::function<void()> on_abort) = 0;
  virtual bool aborted() const noexcept = 0;

  // Runs `work` on the connection's strand (after what was posted before). Dropped when the server is gone.
  virtual void post(std::function<void()> work) = 0;
};

using Handler = std::function<void(std::shared_ptr<Exchange>)>;

struct CorsOptions {
  // Empty: no CORS headers at all. "*" allows any origin.
  std::vector<std::string> allow_origins;
  bool allow_credentials = false;
  std::vector<std::string> allow_methods = {"*"};
  std::vector<std::string> allow_headers = {"*"};
};

struct ServerOptions {
  std::string address = "0.0.0.0";
  uint16_t port = 0;  // 0: any free port (see Server::port())
  int threads = 2;
  size_t max_body_bytes = size_t(16) << 20;
  size_t max_header_bytes = size_t(64) << 10;
  size_t max_stream_buffer_bytes = size_t(4) << 20;
  size_t max_connections = 20000;  // beyond this, new connections are closed at once
  std::chrono::seconds idle_timeout{120};   // waiting for (the rest of) a request
  std::chrono::seconds write_timeout{60};   // one write to a client that does not read
  CorsOptions cors;
  // Names besides the bound address, IP addresses, localhost and this
  // machine's name that the server answers to as Host ("*": any); see request_rules.hpp.
  std::vector<std::string> allowed_hosts;
  // What a POST body must be declared as (empty: anything), and the paths
  // that take multipart/form-data too (uploads; see request_rules.hpp).
  std::vector<std::string> body_content_types = {"application/json"};
  std::vector<std::string> multipart_paths;
  std::string server_header = "hostrun";
  Logger log;  // access lines at debug, trouble at warning
  // Set: every connection is TLS (load_tls in tls.hpp), and one that sends
  // plain HTTP gets a 400 saying so. Null: plain HTTP.
  std::shared_ptr<TlsContext> tls;
};

// Counters the frontends export as metrics.
struct ServerStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  uint64_t requests = 0;
  uint64_t aborted_exchanges = 0;  // client gone before its response was complete
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();  // stops (see stop()) and joins
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Routes by method and path. The longest matching prefix wins; `exact`
  // matches the whole path only. Method "*" matches any method. A path that
  // matches no route gets 404, one whose routes take other methods 405, both
  // as JSON errors. Register routes before start().
  void route(std::string method, std::string path, Handler handler, bool exact = true);
  // Wraps every handler; e.g. authentication. May answer itself or call `next`.
  void set_filter(std::function<void(std::shared_ptr<Exchange>, const Handler& next)> filter);

  // Binds, listens and starts the threads. Fails with what was asked and why.
  Status start();
  uint16_t port() const noexcept;  // the bound port, once started

  // Stops accepting; each connection closes after its current response. For a
  // graceful stop: drain(), let pending answers finish (or fail them), then stop().
  void drain() noexcept;
  // Stops accepting, aborts every pending exchange (their abort callbacks run)
  // and closes every connection. Safe from any thread, any number of times.
  void stop() noexcept;
  // Blocks until stop() was called and every thread has ended.
  void join() noexcept;

  ServerStats stats() const noexcept;

  class Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// {"error": {"message", "type", "param", "code"}}, OpenAI's shape.
Response json_error(int status, std::string_view message, std::string_view type,
                    std::string_view param = {}, std::string_view code = {});
// One Server-Sent Event carrying `data` (which may hold newlines).
std::string sse_event(std::string_view data);

}  // namespace hostrun::http
