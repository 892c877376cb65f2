// The HTTP/1.1 server behind http_server.hpp: Beast parses requests, responses
// are written as plain bytes through one queue per connection.
//
// Why one queue of bytes: a full response, the head of a stream and each chunk
// all go through it, so pieces queued while a write is in flight leave in one
// batch (fewer syscalls under load) and the queue's length is the measure of
// backpressure.
#include "http_server.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <unordered_map>

#include "ascii.hpp"
#include "request_reader.hpp"
#include "request_rules.hpp"
#include "tls_context.hpp"

namespace hostrun::http {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;
using Strand = net::strand<net::io_context::executor_type>;

namespace {

// A header value must not end the header block early.
std::string header_safe(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c == '\r' || c == '\n') c = ' ';
  return out;
}

std::string join_list(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

bool contains(const std::vector<std::string>& items, std::string_view wanted) {
  return std::find(items.begin(), items.end(), wanted) != items.end();
}

}  // namespace

Response json_error(int status, std::string_view message, std::string_view type, std::string_view param,
                    std::string_view code) {
  using json = nlohmann::ordered_json;
  json error = {{"message", std::string(message)},
                {"type", std::string(type)},
                {"param", param.empty() ? json() : json(std::string(param))},
                {"code", code.empty() ? json() : json(std::string(code))}};
  Response response;
  response.status = status;
  response.body = json{{"error", error}}.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

std::string sse_event(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 8);
  size_t start = 0;
  for (;;) {
    size_t end = data.find('\n', start);
    out += "data: ";
    out.append(data.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    out += '\n';
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  out += '\n';
  return out;
}

class ConnectionBase;

struct Route {
  std::string method;
  std::string path;
  bool exact;
  Handler handler;
};

class Server::Impl : public std::enable_shared_from_this<Impl> {
 public:
  explicit Impl(ServerOptions o) : options(std::move(o)), acceptor(ioc), retry_timer(ioc) {
    access.server_address = options.address;
    char name[256] = {};
    if (gethostname(name, sizeof name - 1) == 0) access.machine_name = name;
    access.allowed_hosts = options.allowed_hosts;
    access.allowed_origins = options.cors.allow_origins;
    access.body_content_types = options.body_content_types;
    access.multipart_paths = options.multipart_paths;
  }

  // Runs `work` on `strand` (or anywhere) unless the server has shut down for
  // good: work queued after join()'s last poll would never run, and what it
  // holds (this object, through the handlers') would never be freed.
  void post(const Strand& strand, std::function<void()> work) {
    std::lock_guard lock(gate_mutex);
    if (gate_closed) return;
    net::post(strand, std::move(work));
  }
  void post(std::function<void()> work) {
    std::lock_guard lock(gate_mutex);
    if (gate_closed) return;
    net::post(ioc, std::move(work));
  }

  void accept();
  std::shared_ptr<ConnectionBase> make_connection(const Strand& strand, tcp::socket socket);
  void forget(ConnectionBase* connection);
  void dispatch(const std::shared_ptr<Exchange>& exchange);
  std::string cors_headers(const Request& request, bool preflight) const;
  bool origin_allowed(const std::string& origin) const {
    return contains(options.cors.allow_origins, "*") || contains(options.cors.allow_origins, origin);
  }

  ServerOptions options;
  AccessRules access;
  std::vector<Route> routes;
  std::function<void(std::shared_ptr<Exchange>, const Handler&)> filter;

  net::io_context ioc;
  tcp::acceptor acceptor;
  net::steady_timer retry_timer;
  std::vector<std::thread> threads;
  uint16_t bound_port = 0;

  std::mutex gate_mutex;
  bool gate_closed = false;

  std::mutex connections_mutex;
  std::unordered_map<ConnectionBase*, std::weak_ptr<ConnectionBase>> connections;

  std::mutex stop_mutex;
  std::condition_variable stop_cv;
  bool stop_requested = false;  // stop() has begun (it runs once)
  bool stop_queued = false;     // ... and has queued all its work: join() may go on
  bool joined = false;
  std::atomic<bool> draining{false};

  std::atomic<uint64_t> accepted{0}, open{0}, requests{0}, aborted{0};
};

class ExchangeImpl;

// What an exchange and the server need of a connection, whatever carries it.
// The one implementation is Connection<Stream> below, over plain TCP or TLS.
class ConnectionBase : public std::enable_shared_from_this<ConnectionBase> {
 public:
  ConnectionBase(std::shared_ptr<Server::Impl> server, Strand strand)
      : server_(std::move(server)), strand_(std::move(strand)) {}
  virtual ~ConnectionBase() = default;

  virtual void start() = 0;

  // Runs `work` on this connection's strand: now when already there, else posted.
  void run_here(std::function<void()> work) {
    if (strand_.running_in_this_thread())
      work();
    else
      server_->post(strand_, std::move(work));
  }
  void post(std::function<void()> work) { server_->post(strand_, std::move(work)); }

  // The exchange's answers, on the strand. `owner` guards against a late call
  // for an exchange the connection has already moved past.
  virtual void send_response(ExchangeImpl* owner, Response response) = 0;
  virtual void send_stream_head(ExchangeImpl* owner, int status, const std::string& content_type,
                                const std::vector<Header>& headers) = 0;
  virtual void send_chunk(ExchangeImpl* owner, std::string piece) = 0;
  virtual void send_stream_end(ExchangeImpl* owner) = 0;
  // Client gone or server stopping: abort the pending exchange, close the socket.
  virtual void abort(const char* why) = 0;

 protected:
  std::shared_ptr<Server::Impl> server_;
  Strand strand_;
};

using TlsStream = beast::ssl_stream<beast::tcp_stream>;

template <typename Stream>
class Connection final : public ConnectionBase {
 public:
  static constexpr bool kTls = std::is_same_v<Stream, TlsStream>;

  Connection(std::shared_ptr<Server::Impl> server, Strand strand, Stream stream)
      : ConnectionBase(std::move(server), std::move(strand)), stream_(std::move(stream)) {
    boost::system::error_code ec;
    auto endpoint = tcp().socket().remote_endpoint(ec);
    if (!ec) remote_ = endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
    // Tokens are small writes that must leave now, not after a delayed ACK.
    tcp().socket().set_option(tcp::no_delay(true), ec);
  }
  ~Connection() override { close_socket(); }

  void start() override {
    if constexpr (kTls)
      read_client_hello();
    else
      read_request();
  }

  void send_response(ExchangeImpl* owner, Response response) override;
  void send_stream_head(ExchangeImpl* owner, int status, const std::string& content_type,
                        const std::vector<Header>& headers) override;
  void send_chunk(ExchangeImpl* owner, std::string piece) override;
  void send_stream_end(ExchangeImpl* owner) override;
  void abort(const char* why) override;

 private:
  static constexpr size_t kReadSize = 4096;

  // The TCP connection under the stream (the stream itself when plain): its
  // socket, and the timeouts, which cover every read and write above it.
  beast::tcp_stream& tcp() { return beast::get_lowest_layer(stream_); }
  std::shared_ptr<Connection> shared() { return std::static_pointer_cast<Connection>(shared_from_this()); }

  // TLS only: the first bytes, the handshake, a plain-HTTP client's refusal.
  void read_client_hello();
  void handshake();
  void refuse_plain_http();

  void read_request();
  void read_head();
  void on_head();
  void read_body();
  void on_read(beast::error_code ec);
  void handle();
  void reject(int status, std::string_view message);
  std::string head(int status, std::string_view content_type, const std::vector<Header>& headers,
                   std::optional<size_t> content_length);
  void enqueue(std::string bytes, bool ends_response);
  void flush();
  void on_written(beast::error_code ec);
  void after_response();
  void close_gracefully();
  void watch_for_disconnect();
  void read_ahead();
  void close_socket();

  Stream stream_;
  beast::flat_buffer buffer_;
  size_t head_searched_ = 0;  // how much of buffer_ read_head() has searched for the end of the head
  std::optional<RequestParser> parser_;
  // The head's fields, taken before the body is read: the parser adds a
  // chunked body's trailer fields to its own, and those must not pass for
  // headers (RFC 9110 section 6.5.1), e.g. a Content-Type the head lacked.
  std::vector<Header> head_fields_;
  std::string remote_;

  std::shared_ptr<ExchangeImpl> current_;  // reset when its response is written or it is aborted
  bool keep_alive_ = true;
  bool http10_ = false;
  bool streaming_ = false;
  bool response_queued_ = false;  // the last byte of current_'s response is in the queue
  std::string queue_;             // bytes waiting for the next write
  std::string in_flight_;         // bytes of the write in progress
  bool writing_ = false;
  bool watching_ = false;
  bool reading_ahead_ = false;  // TLS: a read_ahead() is in progress
  bool head_wanted_ = false;    // TLS: read_request() waits for that read to end
  bool closed_ = false;
  bool counted_open_ = true;
};

class ExchangeImpl final : public Exchange, public std::enable_shared_from_this<ExchangeImpl> {
 public:
  ExchangeImpl(std::shared_ptr<ConnectionBase> connection, Request request)
      : connection_(std::move(connection)), request_(std::move(request)) {}

  const Request& request() const noexcept override { return request_; }

  void respond(Response response) override {
    if (answered_.exchange(true)) return;
    connection_->run_here([self = shared_from_this(), response = std::move(response)]() mutable {
      self->connection_->send_response(self.get(), std::move(response));
    });
  }

  void begin_stream(int status, std::string content_type, std::vector<Header> headers) override {
    if (answered_.exchange(true)) return;
    connection_->run_here([self = shared_from_this(), status, content_type = std::move(content_type),
                           headers = std::move(headers)] {
      self->connection_->send_stream_head(self.get(), status, content_type, headers);
    });
  }

  bool write(std::string piece) override {
    if (aborted_) return false;
    connection_->run_here([self = shared_from_this(), piece = std::move(piece)]() mutable {
      self->connection_->send_chunk(self.get(), std::move(piece));
    });
    return !aborted_;
  }

  void finish() override {
    if (finished_.exchange(true)) return;
    connection_->run_here([self = shared_from_this()] { self->connection_->send_stream_end(self.get()); });
  }

  void on_abort(std::function<void()> callback) override {
    bool call_now = false;
    {
      std::lock_guard lock(mutex_);
      if (aborted_)
        call_now = true;
      else
        on_abort_ = std::move(callback);
    }
    if (call_now && callback) post(std::move(callback));
  }

  bool aborted() const noexcept override { return aborted_; }

  void post(std::function<void()> work) override { connection_->post(std::move(work)); }

  // On the strand.
  void mark_aborted() {
    std::function<void()> callback;
    {
      std::lock_guard lock(mutex_);
      if (aborted_) return;
      aborted_ = true;
      callback = std::move(on_abort_);
      on_abort_ = nullptr;
    }
    if (callback) {
      try {
        callback();
      } catch (...) {
        // An abort callback that throws must not take the io thread with it.
      }
    }
  }
  void mark_complete() {
    std::lock_guard lock(mutex_);
    on_abort_ = nullptr;  // drops what the callback holds (an engine request, a frontend's state)
  }

 private:
  std::shared_ptr<ConnectionBase> connection_;
  Request request_;
  std::atomic<bool> answered_{false};
  std::atomic<bool> finished_{false};
  std::atomic<bool> aborted_{false};
  std::mutex mutex_;
  std::function<void()> on_abort_;
};

// ---- Connection ----------------------------------------------------------

// TLS: the first bytes tell a TLS client (a handshake record) from one that
// speaks plain HTTP to this port, who is answered in plain HTTP and closed
// instead of failing a handshake with no word why. Hello and handshake share
// the idle timeout, so a client that connects and says nothing is closed.
template <typename Stream>
void Connection<Stream>::read_client_hello() {
  tcp().expires_after(server_->options.idle_timeout);
  tcp().async_read_some(buffer_.prepare(kReadSize), [self = shared()](beast::error_code ec, size_t n) {
    self->buffer_.commit(n);
    if (self->closed_) return;
    if (ec) return self->abort("closed before the TLS handshake");
    std::string_view first(static_cast<const char*>(self->buffer_.data().data()), self->buffer_.size());
    if (!starts_tls_handshake(first)) return self->refuse_plain_http();
    self->handshake();
  });
}

template <typename Stream>
void Connection<Stream>::handshake() {
  // The bytes already read are the handshake's first; OpenSSL takes them from buffer_.
  stream_.async_handshake(net::ssl::stream_base::server, buffer_.data(),
                          [self = shared()](beast::error_code ec, size_t used) {
                            if (self->closed_) return;
                            if (ec) {
                              self->server_->options.log.debug("{}: TLS handshake failed: {}", self->remote_,
                                                               ec.message());
                              return self->abort("TLS handshake failed");
                            }
                            self->buffer_.consume(used);
                            self->read_request();
                          });
}

template <typename Stream>
void Connection<Stream>::refuse_plain_http() {
  server_->options.log.debug("{}: plain HTTP on this TLS port", remote_);
  keep_alive_ = false;
  Response response = json_error(400, "this port speaks HTTPS: use an https:// URL", "invalid_request_error");
  in_flight_ = head(response.status, response.content_type, {}, response.body.size()) + response.body;
  writing_ = true;
  tcp().expires_after(server_->options.write_timeout);
  net::async_write(tcp(), net::buffer(in_flight_), [self = shared()](beast::error_code, size_t) {
    self->writing_ = false;
    boost::system::error_code ignored;
    self->tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
    self->abort("plain HTTP on the TLS port");
  });
}

template <typename Stream>
void Connection<Stream>::read_request() {
  if (closed_) return;
  parser_.emplace();
  limit_parser(*parser_, server_->options);
  head_searched_ = 0;
  tcp().expires_after(server_->options.idle_timeout);
  // One read at a time: the read-ahead's bytes (or its end) come first.
  if (reading_ahead_) {
    head_wanted_ = true;
    return;
  }
  read_head();
}

// Reads until the buffer holds a whole head. Beast's own async_read_header
// would parse the head as it arrives, unfolding folded lines before anyone
// could see them; the head's bytes are checked first (parse_head).
template <typename Stream>
void Connection<Stream>::read_head() {
  if (closed_) return;
  std::string_view buffered(static_cast<const char*>(buffer_.data().data()), buffer_.size());
  if constexpr (!kTls) {
    // No request starts with this byte; waiting for a head would leave the
    // TLS client waiting for a server hello until the idle timeout.
    if (starts_tls_handshake(buffered)) {
      keep_alive_ = false;
      server_->options.log.debug("{}: a TLS handshake on this plain-HTTP port", remote_);
      return reject(400, "this port speaks plain HTTP, not TLS: use an http:// URL");
    }
  }
  size_t end = head_end(buffered, head_searched_);
  if (end == std::string_view::npos) {
    if (buffered.size() > server_->options.max_header_bytes) {
      keep_alive_ = false;
      return reject(431, "the request headers are too large");
    }
    head_searched_ = buffered.size();
    stream_.async_read_some(buffer_.prepare(kReadSize), [self = shared()](beast::error_code ec, size_t n) {
      self->buffer_.commit(n);
      if (ec) return self->on_read(ec);
      self->read_head();
    });
    return;
  }
  // Framing is judged on the head alone: a body whose length is in doubt is never read.
  auto refusal = parse_head(*parser_, buffered.substr(0, end), server_->options);
  buffer_.consume(end);
  if (refusal) {
    keep_alive_ = false;
    return reject(refusal->status, refusal->message);
  }
  head_fields_ = header_fields(*parser_);
  on_head();
}

template <typename Stream>
void Connection<Stream>::on_head() {
  // curl and others wait for "100 Continue" before sending a large body.
  const auto& message = parser_->get();
  auto expect = message.find(bhttp::field::expect);
  if (expect != message.end() && iequals(expect->value(), "100-continue") && message.version() >= 11) {
    in_flight_ = "HTTP/1.1 100 Continue\r\n\r\n";
    writing_ = true;
    net::async_write(stream_, net::buffer(in_flight_), [self = shared()](beast::error_code ec, size_t) {
      self->writing_ = false;
      self->in_flight_.clear();
      if (ec) return self->abort("the client went away");
      self->read_body();
    });
    return;
  }
  read_body();
}

template <typename Stream>
void Connection<Stream>::read_body() {
  if (closed_) return;
  bhttp::async_read(stream_, buffer_, *parser_,
                    [self = shared()](beast::error_code ec, size_t) { self->on_read(ec); });
}

template <typename Stream>
void Connection<Stream>::on_read(beast::error_code ec) {
  if (closed_) return;
  if (ec == bhttp::error::end_of_stream || ec == net::error::eof || ec == net::error::connection_reset ||
      ec == net::error::operation_aborted || ec == beast::error::timeout) {
    return abort("closed");
  }
  if (ec) {
    auto refusal = parse_error_refusal(ec, server_->options);
    if (!refusal) return abort("read error");
    // Where one request ends is no longer known, so nothing after it on this connection can be read.
    keep_alive_ = false;
    return reject(refusal->status, refusal->message);
  }
  tcp().expires_never();
  handle();
}

template <typename Stream>
void Connection<Stream>::reject(int status, std::string_view message) {
  http10_ = false;
  streaming_ = false;
  Response response = json_error(status, message, "invalid_request_error");
  enqueue(head(status, response.content_type, {}, response.body.size()) + response.body, true);
}

template <typename Stream>
void Connection<Stream>::handle() {
  keep_alive_ = parser_->get().keep_alive();
  http10_ = parser_->get().version() < 11;
  Request request = make_request(*parser_, std::move(head_fields_), remote_);
  request.received = std::chrono::steady_clock::now();
  streaming_ = false;
  response_queued_ = false;
  ++server_->requests;
  server_->options.log.debug("{} {} from {}", request.method, request.target, remote_);

  current_ = std::make_shared<ExchangeImpl>(shared_from_this(), std::move(request));
  auto exchange = current_;
  server_->dispatch(exchange);
  // Whatever the handler did, a client that leaves before its answer is complete must be noticed.
  if (current_ == exchange && !closed_) watch_for_disconnect();
}

template <typename Stream>
std::string Connection<Stream>::head(int status, std::string_view content_type, const std::vector<Header>& headers,
                             std::optional<size_t> content_length) {
  std::string out = fmt::format("HTTP/1.1 {} {}\r\nServer: {}\r\n", status,
                                std::string_view(bhttp::obsolete_reason(bhttp::int_to_status(unsigned(status)))),
                                header_safe(server_->options.server_header));
  if (!content_type.empty()) out += fmt::format("Content-Type: {}\r\n", header_safe(content_type));
  if (content_length)
    out += fmt::format("Content-Length: {}\r\n", *content_length);
  else if (!http10_)
    out += "Transfer-Encoding: chunked\r\n";
  bool keep = keep_alive_ && !closed_ && !(http10_ && !content_length);
  out += keep ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  if (!keep) keep_alive_ = false;
  // A JSON answer must never be read as a script or a page by a browser guessing its type.
  out += "X-Content-Type-Options: nosniff\r\n";
  for (const auto& h : headers) out += fmt::format("{}: {}\r\n", header_safe(h.name), header_safe(h.value));
  if (current_) out += server_->cors_headers(current_->request(), false);
  out += "\r\n";
  return out;
}

template <typename Stream>
void Connection<Stream>::send_response(ExchangeImpl* owner, Response response) {
  if (closed_ || owner != current_.get() || response_queued_) return;
  streaming_ = false;
  std::string bytes = head(response.status, response.content_type, response.headers, response.body.size());
  bytes += response.body;
  enqueue(std::move(bytes), true);
}

template <typename Stream>
void Connection<Stream>::send_stream_head(ExchangeImpl* owner, int status, const std::string& content_type,
                                  const std::vector<Header>& headers) {
  if (closed_ || owner != current_.get() || response_queued_) return;
  streaming_ = true;
  std::vector<Header> all = headers;
  // Proxies (nginx) buffer event streams unless told not to.
  all.push_back({"Cache-Control", "no-cache"});
  all.push_back({"X-Accel-Buffering", "no"});
  enqueue(head(status, content_type, all, std::nullopt), false);
}

template <typename Stream>
void Connection<Stream>::send_chunk(ExchangeImpl* owner, std::string piece) {
  if (closed_ || owner != current_.get() || !streaming_ || response_queued_ || piece.empty()) return;
  if (http10_) return enqueue(std::move(piece), false);
  enqueue(fmt::format("{:x}\r\n", piece.size()) + piece + "\r\n", false);
}

template <typename Stream>
void Connection<Stream>::send_stream_end(ExchangeImpl* owner) {
  if (closed_ || owner != current_.get() || !streaming_ || response_queued_) return;
  if (http10_) keep_alive_ = false;
  enqueue(http10_ ? std::string() : std::string("0\r\n\r\n"), true);
}

template <typename Stream>
void Connection<Stream>::enqueue(std::string bytes, bool ends_response) {
  if (closed_) return;
  queue_ += bytes;
  if (ends_response) response_queued_ = true;
  // A reader that does not keep up must not make us hold its whole answer.
  if (queue_.size() + in_flight_.size() > server_->options.max_stream_buffer_bytes) {
    server_->options.log.warn("dropping {}: it is not reading ({} bytes queued)", remote_,
                              queue_.size() + in_flight_.size());
    return abort("not reading");
  }
  if (!writing_) flush();
}

template <typename Stream>
void Connection<Stream>::flush() {
  if (closed_ || writing_) return;
  if (queue_.empty()) {
    if (response_queued_) after_response();
    return;
  }
  writing_ = true;
  in_flight_.swap(queue_);
  queue_.clear();
  tcp().expires_after(server_->options.write_timeout);
  net::async_write(stream_, net::buffer(in_flight_),
                   [self = shared()](beast::error_code ec, size_t) { self->on_written(ec); });
}

template <typename Stream>
void Connection<Stream>::on_written(beast::error_code ec) {
  writing_ = false;
  in_flight_.clear();
  if (closed_) return;
  if (ec) return abort("write failed");
  tcp().expires_never();
  flush();
}

template <typename Stream>
void Connection<Stream>::after_response() {
  if (current_) current_->mark_complete();
  current_.reset();
  response_queued_ = false;
  streaming_ = false;
  if (!keep_alive_ || server_->draining.load()) return close_gracefully();
  read_request();
}

// The last response is out; the client learns that nothing more comes. Under
// TLS that is a close_notify first, so a client reading a body that ends with
// the connection (HTTP/1.0) can tell the end from a cut; waiting for the
// client's own close_notify is bounded.
template <typename Stream>
void Connection<Stream>::close_gracefully() {
  if constexpr (kTls) {
    tcp().expires_after(std::min<std::chrono::steady_clock::duration>(server_->options.write_timeout,
                                                                      std::chrono::seconds(5)));
    stream_.async_shutdown([self = shared()](beast::error_code) { self->abort("done"); });
  } else {
    boost::system::error_code ignored;
    tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
    abort("done");
  }
}

// A pending answer (the engine is still generating) does not read the socket,
// so a client that hangs up would go unnoticed until the next write. Waiting
// for readability and peeking tells EOF (gone) from bytes. Plain, bytes are a
// pipelined request; under TLS they may as well be the client's close_notify,
// which only decrypting tells (read_ahead).
template <typename Stream>
void Connection<Stream>::watch_for_disconnect() {
  if (watching_ || closed_) return;
  watching_ = true;
  tcp().socket().async_wait(tcp::socket::wait_read, net::bind_executor(strand_, [self = shared()](
                                                                                      beast::error_code ec) {
    self->watching_ = false;
    // Once the answer is complete, the next request's read watches the socket itself.
    if (self->closed_ || ec || !self->current_) return;
    char byte;
    boost::system::error_code peek_error;
    self->tcp().socket().non_blocking(true, peek_error);
    size_t n = self->tcp().socket().receive(net::buffer(&byte, 1), tcp::socket::message_peek, peek_error);
    if (peek_error == net::error::would_block || peek_error == net::error::try_again) {
      if (self->current_) self->watch_for_disconnect();
      return;
    }
    if (peek_error || n == 0) return self->abort("the client disconnected");
    if constexpr (kTls) self->read_ahead();
  }));
}

// TLS: decrypts what arrived while an answer is pending. The end of the stream
// (a close_notify, whose record type TLS 1.3 hides, or a cut) is the client
// hanging up; data is its next request, left in buffer_ for read_head(). One
// read of at most kReadSize, so a pipelining client cannot make us hold more.
template <typename Stream>
void Connection<Stream>::read_ahead() {
  if (closed_ || reading_ahead_) return;
  reading_ahead_ = true;
  tcp().expires_after(server_->options.idle_timeout);  // a record that never completes
  stream_.async_read_some(buffer_.prepare(kReadSize), [self = shared()](beast::error_code ec, size_t n) {
    self->reading_ahead_ = false;
    self->buffer_.commit(n);
    if (self->closed_) return;
    if (ec) return self->current_ ? self->abort("the client disconnected") : self->on_read(ec);
    if (!self->head_wanted_) return;
    // The answer was completed meanwhile and read_request() is waiting.
    self->head_wanted_ = false;
    self->tcp().expires_after(self->server_->options.idle_timeout);
    self->read_head();
  });
}

template <typename Stream>
void Connection<Stream>::abort(const char* why) {
  if (closed_) return;
  closed_ = true;
  if (current_ && !(response_queued_ && queue_.empty() && !writing_)) {
    ++server_->aborted;
    server_->options.log.debug("{}: {} before its response was complete", remote_, why);
    current_->mark_aborted();
  }
  if (current_) current_->mark_complete();
  current_.reset();
  close_socket();
}

template <typename Stream>
void Connection<Stream>::close_socket() {
  boost::system::error_code ignored;
  tcp().socket().close(ignored);
  tcp().cancel();
  if (counted_open_) {
    counted_open_ = false;
    --server_->open;
    server_->forget(this);
  }
}

// ---- Server ----------------------------------------------------------------

std::shared_ptr<ConnectionBase> Server::Impl::make_connection(const Strand& strand, tcp::socket socket) {
  auto self = shared_from_this();
  if (options.tls)
    return std::make_shared<Connection<TlsStream>>(self, strand,
                                                   TlsStream(beast::tcp_stream(std::move(socket)), options.tls->ssl));
  return std::make_shared<Connection<beast::tcp_stream>>(self, strand, beast::tcp_stream(std::move(socket)));
}

void Server::Impl::forget(ConnectionBase* connection) {
  std::lock_guard lock(connections_mutex);
  connections.erase(connection);
}

void Server::Impl::accept() {
  auto strand = net::make_strand(ioc);
  acceptor.async_accept(strand, [self = shared_from_this(), strand](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || self->draining.load()) return;
    if (ec) {
      // Out of file descriptors: wait a little instead of spinning on accept.
      self->options.log.warn("accept failed: {}", ec.message());
      self->retry_timer.expires_after(std::chrono::milliseconds(100));
      self->retry_timer.async_wait([self](beast::error_code wait_error) {
        if (!wait_error) self->accept();
      });
      return;
    }
    ++self->accepted;
    if (self->open.load() >= self->options.max_connections) {
      self->options.log.warn("refusing a connection: {} are open (max_connections)", self->open.load());
      boost::system::error_code ignored;
      socket.close(ignored);
    } else {
      ++self->open;
      auto connection = self->make_connection(strand, std::move(socket));
      {
        std::lock_guard lock(self->connections_mutex);
        self->connections.emplace(connection.get(), connection);
      }
      net::post(strand, [connection] { connection->start(); });
    }
    self->accept();
  });
}

std::string Server::Impl::cors_headers(const Request& request, bool preflight) const {
  const CorsOptions& cors = options.cors;
  const std::string* origin = request.header("origin");
  if (cors.allow_origins.empty() || !origin || !origin_allowed(*origin)) return {};
  std::string out;
  // With credentials the browser refuses "*", so the origin is echoed.
  if (contains(cors.allow_origins, "*") && !cors.allow_credentials)
    out += "Access-Control-Allow-Origin: *\r\n";
  else
    out += "Access-Control-Allow-Origin: " + header_safe(*origin) + "\r\nVary: Origin\r\n";
  if (cors.allow_credentials) out += "Access-Control-Allow-Credentials: true\r\n";
  if (preflight) {
    const std::string* method = request.header("access-control-request-method");
    const std::string* headers = request.header("access-control-request-headers");
    std::string methods = contains(cors.allow_methods, "*") && method ? *method : join_list(cors.allow_methods, ", ");
    if (contains(cors.allow_methods, "*") && !cors.allow_credentials) methods = "*";
    out += "Access-Control-Allow-Methods: " + header_safe(methods) + "\r\n";
    std::string allowed_headers = contains(cors.allow_headers, "*") ? (headers ? *headers : std::string())
                                                                   : join_list(cors.allow_headers, ", ");
    if (!allowed_headers.empty()) out += "Access-Control-Allow-Headers: " + header_safe(allowed_headers) + "\r\n";
    out += "Access-Control-Max-Age: 600\r\n";
  }
  return out;
}

void Server::Impl::dispatch(const std::shared_ptr<Exchange>& exchange) {
  const Request& request = exchange->request();
  // Before anything else, the preflight included: a request for another name, or sent by another site's page.
  for (auto check : {check_host, check_origin}) {
    if (auto refusal = check(request, access))
      return exchange->respond(json_error(refusal->status, refusal->message, "invalid_request_error"));
  }
  // A CORS preflight is answered here, before routing and authentication (browsers send no credentials with it).
  if (request.method == "OPTIONS" && request.header("origin") && origin_allowed(*request.header("origin")) &&
      request.header("access-control-request-method")) {
    Response response;
    response.status = 204;
    response.content_type.clear();
    std::string cors = cors_headers(request, true);
    // cors_headers() returns header lines; split them back into Header values.
    size_t start = 0;
    while (start < cors.size()) {
      size_t end = cors.find("\r\n", start);
      std::string line = cors.substr(start, end - start);
      size_t colon = line.find(':');
      // Access-Control-Allow-Origin (and Vary) are added again by head(); keep only the preflight ones.
      std::string name = line.substr(0, colon);
      if (name != "Access-Control-Allow-Origin" && name != "Vary" && name != "Access-Control-Allow-Credentials")
        response.headers.push_back({name, line.substr(colon + 2)});
      start = end + 2;
    }
    return exchange->respond(std::move(response));
  }

  const Route* best = nullptr;
  bool path_matched = false;
  std::vector<std::string> allowed;
  for (const auto& route : routes) {
    bool matches = route.exact ? request.path == route.path : request.path.starts_with(route.path);
    if (!matches) continue;
    if (route.method != "*" && route.method != request.method) {
      path_matched = true;
      allowed.push_back(route.method);
      continue;
    }
    if (!best || route.path.size() > best->path.size()) best = &route;
  }
  if (best) {
    if (auto refusal = check_content_type(request, access))
      return exchange->respond(json_error(refusal->status, refusal->message, "invalid_request_error"));
  } else {
    if (path_matched) {
      Response response = json_error(405, fmt::format("{} is not allowed on {}; allowed: {}", request.method,
                                                      request.path, join_list(allowed, ", ")),
                                     "invalid_request_error");
      response.headers.push_back({"Allow", join_list(allowed, ", ")});
      return exchange->respond(std::move(response));
    }
    return exchange->respond(json_error(404, fmt::format("no route for {} {}", request.method, request.path),
                                        "invalid_request_error", {}, "not_found"));
  }
  try {
    if (filter)
      filter(exchange, best->handler);
    else
      best->handler(exchange);
  } catch (const std::exception& e) {
    options.log.error("handler for {} {} threw: {}", request.method, request.path, e.what());
    exchange->respond(json_error(500, std::string("internal error: ") + e.what(), "server_error"));
  } catch (...) {
    exchange->respond(json_error(500, "internal error", "server_error"));
  }
}

Server::Server(ServerOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {}

Server::~Server() {
  stop();
  join();
}

void Server::route(std::string method, std::string path, Handler handler, bool exact) {
  impl_->routes.push_back({std::move(method), std::move(path), exact, std::move(handler)});
}

void Server::set_filter(std::function<void(std::shared_ptr<Exchange>, const Handler&)> filter) {
  impl_->filter = std::move(filter);
}

Status Server::start() {
  Impl& s = *impl_;
  if (contains(s.options.cors.allow_origins, "*") && s.options.cors.allow_credentials)
    s.options.log.warn("allow_origins '*' with allow_credentials: the origin of every request is echoed with "
                       "Access-Control-Allow-Credentials, so a page on any web site can call this server with "
                       "the browser's credentials; list the origins that may instead");
  // Each open stream is a file descriptor; the default soft limit (often 1024) is far below what we serve.
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
  boost::system::error_code ec;
  auto address = net::ip::make_address(s.options.address, ec);
  if (ec) {
    // A host name ("localhost"): listen on its first address.
    tcp::resolver resolver(s.ioc);
    auto found = resolver.resolve(s.options.address, "", ec);
    if (ec || found.empty())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("server_name '{}' is neither an IP address nor a name that resolves ({})",
                                s.options.address, ec ? ec.message() : "no addresses"));
    address = found.begin()->endpoint().address();
    ec.clear();
  }
  tcp::endpoint endpoint(address, s.options.port);
  auto fail = [&](const char* step) {
    return Status(ErrorCode::io_error, fmt::format("cannot listen on {}:{}: {} failed: {}", s.options.address,
                                                   s.options.port, step, ec.message()));
  };
  s.acceptor.open(endpoint.protocol(), ec);
  if (ec) return fail("open");
  s.acceptor.set_option(net::socket_base::reuse_address(true), ec);
  s.acceptor.bind(endpoint, ec);
  if (ec) return fail("bind");
  s.acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return fail("listen");
  s.bound_port = s.acceptor.local_endpoint(ec).port();
  s.accept();
  int threads = std::max(1, s.options.threads);
  for (int i = 0; i < threads; ++i) {
    s.threads.emplace_back([impl = impl_] {
      for (;;) {
        try {
          impl->ioc.run();
          return;
        } catch (const std::exception& e) {
          impl->options.log.error("an io handler threw: {}", e.what());
        } catch (...) {
          impl->options.log.error("an io handler threw");
        }
      }
    });
  }
  return Status();
}

uint16_t Server::port() const noexcept { return impl_->bound_port; }

void Server::drain() noexcept {
  try {
    if (impl_->draining.exchange(true)) return;
    impl_->post([impl = impl_] {
      boost::system::error_code ignored;
      impl->acceptor.close(ignored);
      impl->retry_timer.cancel();
    });
  } catch (...) {
  }
}

void Server::stop() noexcept {
  try {
    Impl& s = *impl_;
    {
      std::lock_guard lock(s.stop_mutex);
      if (s.stop_requested) return;
      s.stop_requested = true;
    }
    // join() (often on another thread) goes on only once all of this is
    // queued; it then runs what is left after the io threads end.
    drain();
    std::vector<std::shared_ptr<ConnectionBase>> open;
    {
      std::lock_guard lock(s.connections_mutex);
      for (auto& [raw, weak] : s.connections)
        if (auto connection = weak.lock()) open.push_back(std::move(connection));
    }
    for (auto& connection : open) connection->post([connection] { connection->abort("the server is stopping"); });
  } catch (...) {
    // stop() runs from signal watchers and destructors; there is nobody to report to.
  }
  {
    std::lock_guard lock(impl_->stop_mutex);
    impl_->stop_queued = true;
  }
  impl_->stop_cv.notify_all();
}

void Server::join() noexcept {
  Impl& s = *impl_;
  {
    std::unique_lock lock(s.stop_mutex);
    s.stop_cv.wait(lock, [&] { return s.stop_queued; });
    if (s.joined) return;
    s.joined = true;
  }
  // Everything was closed by stop(); the threads end when the last handler has run.
  // A handler that keeps work alive past that is cut off after two seconds.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (s.open.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s.ioc.stop();
  for (auto& thread : s.threads)
    if (thread.joinable()) thread.join();
  {
    std::lock_guard lock(s.gate_mutex);
    s.gate_closed = true;
  }
  // Run what was posted in the meantime, so no queued handler keeps a connection (and this object) alive.
  s.ioc.restart();
  try {
    s.ioc.poll();
  } catch (...) {
  }
}

ServerStats Server::stats() const noexcept {
  return {impl_->accepted.load(), impl_->open.load(), impl_->requests.load(), impl_->aborted.load()};
}

}  // namespace hostrun::http
