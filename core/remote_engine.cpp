// An EngineHandle over HTTP to an OpenAI-compatible server (see the header).
#include "remote_engine.hpp"

#include <hostrun/json_bounds.hpp>
#include <hostrun/version.hpp>

#include <fmt/format.h>

#include <array>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <future>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>
#include <unordered_map>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl.hpp>
#include <fstream>

namespace hostrun::core {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::json;

// The most of a reply kept (an error page) or of one stream event: the
// api_server's own body limit; no OpenAI-compatible server sends more.
constexpr size_t kMaxReplyBytes = size_t(16) << 20;
// A server's JSON is parsed within these: never deeper than 64 levels, never
// more memory than 16 x kMaxReplyBytes (json_bounds.hpp).
const JsonLimits kReplyJsonLimits = network_json_limits(kMaxReplyBytes);

std::string base64(const std::vector<uint8_t>& bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t v = uint32_t(bytes[i]) << 16 | uint32_t(bytes[i + 1]) << 8 | bytes[i + 2];
    for (int shift : {18, 12, 6, 0}) out += kAlphabet[(v >> shift) & 63];
  }
  if (i < bytes.size()) {
    uint32_t v = uint32_t(bytes[i]) << 16 | (i + 1 < bytes.size() ? uint32_t(bytes[i + 1]) << 8 : 0);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string clip(std::string_view text, size_t most = 400) {
  std::string out(text.substr(0, most));
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r' || out.back() == ' ')) out.pop_back();
  if (text.size() > most) out += "...";
  return out;
}

// The message inside an error body, whichever of the common shapes it has:
// OpenAI {"error": {"message"}}, vLLM/LMDeploy {"object": "error", "message"},
// FastAPI {"detail"} as a string; otherwise the body itself, shortened.
std::string server_error_message(std::string_view body) {
  Result<json> parsed = parse_json_bounded<json>(body, kReplyJsonLimits, "the reply");
  if (!parsed || !parsed->is_object()) return body.empty() ? "(empty body)" : clip(body);
  const json& j = *parsed;
  if (auto e = j.find("error"); e != j.end()) {
    if (e->is_string()) return e->get<std::string>();
    if (e->is_object()) {
      auto m = e->find("message");
      if (m != e->end() && m->is_string()) return m->get<std::string>();
    }
  }
  if (auto m = j.find("message"); m != j.end() && m->is_string()) return m->get<std::string>();
  if (auto d = j.find("detail"); d != j.end() && d->is_string()) return d->get<std::string>();
  return clip(body);
}

// The kind of a server's refusal: OpenAI's error code where it names one the
// SDK has (hostrun's api_server and OpenAI send "context_length_exceeded";
// vLLM and LMDeploy send only the HTTP status as their code), else the HTTP
// status. Never the message, whose wording differs from server to server.
ErrorCode error_code_of(unsigned http_status, std::string_view body) {
  Result<json> parsed = parse_json_bounded<json>(body, kReplyJsonLimits, "the reply");
  if (parsed && parsed->is_object())
    if (auto e = parsed->find("error"); e != parsed->end() && e->is_object())
      if (auto code = e->find("code"); code != e->end() && *code == "context_length_exceeded")
        return ErrorCode::context_length_exceeded;
  switch (http_status) {
    case 400: case 413: case 422: return ErrorCode::invalid_argument;
    case 401: case 403: return ErrorCode::permission_denied;
    case 404: return ErrorCode::not_found;
    case 408: case 504: return ErrorCode::deadline_exceeded;
    case 429: return ErrorCode::resource_exhausted;
    case 502: case 503: return ErrorCode::unavailable;
    case 500: return ErrorCode::internal;
    default: return ErrorCode::io_error;
  }
}

bool is_error_object(const json& j) {
  return j.contains("error") || (j.contains("object") && j["object"] == "error");
}

FinishReason finish_from_name(std::string_view name) {
  if (name == "length") return FinishReason::length;
  if (name == "abort" || name == "cancelled") return FinishReason::cancelled;
  if (name == "error") return FinishReason::error;
  return FinishReason::stop;  // stop, eos, tool_calls, content_filter: the reply ended on its own
}

// Splits a server-sent-events byte stream into the data of each event.
class SseSplitter {
 public:
  template <typename OnData>
  void feed(std::string_view bytes, OnData&& on_data) {
    pending_.append(bytes);
    size_t start = 0;
    for (;;) {
      size_t newline = pending_.find('\n', start);
      if (newline == std::string::npos) break;
      std::string_view line(pending_.data() + start, newline - start);
      start = newline + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) {
        if (has_data_) on_data(std::string_view(data_));
        data_.clear();
        has_data_ = false;
      } else if (line.starts_with("data:")) {
        line.remove_prefix(5);
        if (line.starts_with(' ')) line.remove_prefix(1);
        if (has_data_) data_ += '\n';
        data_.append(line);
        has_data_ = true;
      }
      // ':' comments are keep-alives; event:, id: and retry: are not used by OpenAI streams.
    }
    pending_.erase(0, start);
  }
  // What waits for the end of a line or of an event.
  size_t buffered_bytes() const noexcept { return pending_.size() + data_.size(); }
  // A server that closes without the blank line after its last event still sent it.
  template <typename OnData>
  void end(OnData&& on_data) {
    if (!pending_.empty()) feed("\n", on_data);
    if (has_data_) on_data(std::string_view(data_));
    data_.clear();
    has_data_ = false;
  }

 private:
  std::string pending_;
  std::string data_;
  bool has_data_ = false;
};

struct BufferedReply {
  unsigned status = 0;
  std::string body;
};

// One HTTP exchange, independent of whether the connection is TLS.
struct Exchange {
  uint64_t id = 0;
  http::request<http::string_body> request;
  std::chrono::milliseconds read_timeout{0};
  // Streaming completions: SSE deltas become StreamEvents on `on_event`.
  bool streaming = false;
  bool chat = false;
  StreamCallback on_event;
  // Anything else: the whole answer goes to `on_reply`.
  std::function<void(Result<BufferedReply>)> on_reply;
};

class CallBase {
 public:
  virtual ~CallBase() = default;
  virtual void start() = 0;
  virtual void abort() = 0;  // closes the connection; the call then ends as cancelled
};

}  // namespace

struct RemoteEngine::Impl {
  RemoteEngineOptions options;
  ServerUrl url;
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> work{io.get_executor()};
  std::thread thread;
  std::unique_ptr<net::ssl::context> tls;
  EngineInfo info;
  std::atomic<uint64_t> next_id{1};
  std::atomic<bool> closing{false};
  std::unordered_map<uint64_t, std::shared_ptr<CallBase>> calls;  // touched on the io thread only
  mutable std::mutex counters_mutex;
  EngineCounters counters;

  ~Impl() { shut_down(); }

  void shut_down() {
    if (!thread.joinable()) return;
    closing = true;
    net::post(io, [this] {
      // Copy first: abort() may end a call at once, which erases it from the map.
      std::vector<std::shared_ptr<CallBase>> running;
      for (auto& [id, call] : calls) running.push_back(call);
      for (auto& call : running) call->abort();
    });
    work.reset();
    thread.join();
  }

  http::request<http::string_body> make_request(http::verb verb, std::string_view path, std::string body) const {
    http::request<http::string_body> request{verb, url.base_path + std::string(path), 11};
    bool default_port = (url.tls && url.port == "443") || (!url.tls && url.port == "80");
    std::string host = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
    request.set(http::field::host, default_port ? host : host + ":" + url.port);
    request.set(http::field::user_agent, "hostrun/" HOSTRUN_SDK_VERSION_STRING);
    if (!options.api_key.empty()) request.set(http::field::authorization, "Bearer " + options.api_key);
    if (verb == http::verb::post) {
      request.set(http::field::content_type, "application/json");
      request.body() = std::move(body);
      request.prepare_payload();
    }
    return request;
  }

  void start_call(Exchange exchange);  // on the io thread

  // Called once per streamed request, on the io thread, with its last event.
  void finished(uint64_t id, const StreamEvent& event, const StreamCallback& on_event) {
    {
      std::lock_guard lock(counters_mutex);
      counters.running--;
      if (event.finish == FinishReason::cancelled)
        counters.requests_cancelled++;
      else
        counters.requests_finished++;
      counters.prompt_tokens += uint64_t(std::max(event.prompt_tokens, 0));
      counters.completion_tokens += uint64_t(std::max(event.completion_tokens, 0));
    }
    deliver(on_event, event);
    calls.erase(id);
  }

  static void deliver(const StreamCallback& on_event, const StreamEvent& event) {
    // The frontend's callback must not take the io thread down with it.
    try {
      on_event(event);
    } catch (...) {
    }
  }

  // Runs one buffered exchange to the end and waits for it (not on the io thread).
  Result<BufferedReply> fetch(http::verb verb, std::string_view path, std::string body,
                              std::chrono::milliseconds timeout) {
    auto done = std::make_shared<std::promise<Result<BufferedReply>>>();
    auto answer = done->get_future();
    Exchange exchange;
    exchange.id = next_id++;
    exchange.request = make_request(verb, path, std::move(body));
    exchange.read_timeout = timeout;
    exchange.on_reply = [done](Result<BufferedReply> reply) { done->set_value(std::move(reply)); };
    net::post(io, [this, exchange = std::move(exchange)]() mutable { start_call(std::move(exchange)); });
    return answer.get();
  }
};

namespace {

template <typename Stream>
class Call final : public CallBase, public std::enable_shared_from_this<Call<Stream>> {
 public:
  Call(RemoteEngine::Impl& engine, Exchange exchange, Stream stream)
      : engine_(engine), x_(std::move(exchange)), resolver_(engine.io), stream_(std::move(stream)) {}

  void start() override {
    started_ = true;
    phase_ = "resolving";
    resolver_.async_resolve(engine_.url.host, engine_.url.port,
                            [self = this->shared_from_this()](beast::error_code ec, tcp::resolver::results_type found) {
                              self->on_resolve(ec, found);
                            });
  }

  void abort() override {
    if (done_) return;
    cancelled_ = true;
    if (!started_) return end(FinishReason::cancelled, "");
    // The pending operation completes with operation_aborted and ends the call.
    resolver_.cancel();
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().close(ignored);
  }

 private:
  auto& tcp_layer() { return beast::get_lowest_layer(stream_); }

  void on_resolve(beast::error_code ec, const tcp::resolver::results_type& found) {
    if (ec) return fail(ec);
    phase_ = "connecting to";
    tcp_layer().expires_after(engine_.options.connect_timeout);
    tcp_layer().async_connect(found, [self = this->shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
      self->on_connect(ec);
    });
  }

  void on_connect(beast::error_code ec) {
    if (ec) return fail(ec);
    connected_ = true;
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
      phase_ = "negotiating TLS with";
      if (beast::error_code refused = expect_host(stream_.native_handle(), engine_.url.host)) return fail(refused);
      stream_.async_handshake(net::ssl::stream_base::client,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) return self->fail_handshake(ec);
                                self->write();
                              });
      return;
    }
    write();
  }

  // SNI, and a certificate that must name the host we asked for. OpenSSL
  // checks the name itself, so a mismatch is reported as one ("hostname
  // mismatch") rather than as a bare verification failure.
  static beast::error_code expect_host(SSL* ssl, const std::string& host) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    bool address = X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) == 1;
    if (!address) {
      ERR_clear_error();
      // An address is not sent as SNI (RFC 6066 section 3); a name is.
      if (!SSL_set_tlsext_host_name(ssl, host.c_str()) || X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0) != 1)
        return beast::error_code(int(::ERR_get_error()), net::error::get_ssl_category());
    }
    return {};
  }

  // "certificate verify failed" says nothing an operator can act on; OpenSSL's
  // verification result does, and a certificate from a private CA needs that CA.
  void fail_handshake(beast::error_code ec) {
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
      long verified = SSL_get_verify_result(stream_.native_handle());
      if (verified != X509_V_OK && !cancelled_ && !done_) {
        bool unknown_issuer = verified == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
                              verified == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN ||
                              verified == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
                              verified == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT;
        return end(FinishReason::error,
                   fmt::format("Negotiating TLS with {} failed: its certificate is not trusted ({}){}",
                               engine_.url.text(), X509_verify_cert_error_string(verified),
                               unknown_issuer ? "; for a certificate from your own CA, pass that CA's certificate "
                                                "with --ssl-ca-file (or SSL_CERT_FILE)"
                                              : ""),
                   ErrorCode::permission_denied);
      }
    }
    fail(ec);
  }

  void write() {
    phase_ = "sending the request to";
    tcp_layer().expires_after(x_.read_timeout);
    http::async_write(stream_, x_.request, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->fail(ec);
      self->read_header();
    });
  }

  void read_header() {
    phase_ = "waiting for the answer of";
    parser_.emplace();
    // A stream is as long as the reply. Not boost::none: Beast 1.74 compares a
    // Content-Length against the optional itself and then always refuses.
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
    tcp_layer().expires_after(x_.read_timeout);
    http::async_read_header(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec) return self->fail(ec);
      self->status_ = self->parser_->get().result_int();
      self->read_body();
    });
  }

  void read_body() {
    phase_ = "reading the answer of";
    parser_->get().body().data = chunk_.data();
    parser_->get().body().size = chunk_.size();
    tcp_layer().expires_after(x_.read_timeout);
    http::async_read_some(stream_, buffer_, *parser_, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->on_body(ec);
    });
  }

  void on_body(beast::error_code ec) {
    if (ec == http::error::need_buffer) ec = {};
    size_t got = chunk_.size() - parser_->get().body().size;
    if (got > 0) consume(std::string_view(chunk_.data(), got));
    if (done_) return;  // the stream itself said it failed
    if (ec) return fail(ec);
    if (parser_->is_done()) return complete();
    read_body();
  }

  bool streaming_ok() const { return x_.streaming && status_ == 200; }

  void consume(std::string_view bytes) {
    if (!streaming_ok()) {
      // A buffered answer or an error page: keep it whole (within reason).
      if (body_.size() < kMaxReplyBytes) body_.append(bytes.substr(0, kMaxReplyBytes - body_.size()));
      return;
    }
    sse_.feed(bytes, [this](std::string_view data) { on_sse(data); });
    if (!done_ && sse_.buffered_bytes() > kMaxReplyBytes)
      end_with_error(fmt::format("the server at {} sent a stream event of more than {} bytes without ending it",
                                 engine_.url.text(), kMaxReplyBytes));
  }

  void on_sse(std::string_view data) {
    if (done_) return;
    if (data == "[DONE]") {
      saw_done_ = true;
      return;
    }
    Result<json> parsed = parse_json_bounded<json>(data, kReplyJsonLimits, "the event");
    if (!parsed)
      return end_with_error(fmt::format("the server at {} sent a stream event that cannot be read ({}): '{}'",
                                        engine_.url.text(), parsed.status().message(), clip(data, 200)));
    const json& j = *parsed;
    if (!j.is_object())
      return end_with_error(fmt::format("the server at {} sent a stream event that is not a JSON object: '{}'",
                                        engine_.url.text(), clip(data, 200)));
    if (is_error_object(j))
      return end(FinishReason::error,
                 fmt::format("the server at {} reported: {}", engine_.url.text(), server_error_message(data)),
                 error_code_of(500, data));
    if (auto usage = j.find("usage"); usage != j.end() && usage->is_object()) {
      prompt_tokens_ = usage->value("prompt_tokens", 0);
      completion_tokens_ = usage->value("completion_tokens", 0);
    }
    auto choices = j.find("choices");
    if (choices == j.end() || !choices->is_array()) return;
    for (const auto& choice : *choices) {
      if (choice.value("index", 0) != 0) continue;  // we ask for one choice; ignore others
      const json* text = nullptr;
      if (x_.chat) {
        auto delta = choice.find("delta");
        if (delta != choice.end() && delta->is_object()) {
          auto content = delta->find("content");
          if (content != delta->end()) text = &*content;
        }
      } else if (auto t = choice.find("text"); t != choice.end()) {
        text = &*t;
      }
      if (text && text->is_string() && !text->get_ref<const std::string&>().empty()) {
        StreamEvent event;
        event.request_id = x_.id;
        event.text = text->get<std::string>();
        RemoteEngine::Impl::deliver(x_.on_event, event);
      }
      if (auto reason = choice.find("finish_reason"); reason != choice.end() && reason->is_string())
        finish_ = finish_from_name(reason->get<std::string>());
    }
  }

  void complete() {
    if (!x_.streaming) {
      done_ = true;
      close();
      x_.on_reply(BufferedReply{status_, std::move(body_)});
      engine_.calls.erase(x_.id);
      return;
    }
    if (status_ != 200)
      return end(FinishReason::error,
                 fmt::format("the server at {} answered {} {}: {}", engine_.url.text(), status_,
                             std::string(parser_->get().reason()), server_error_message(body_)),
                 error_code_of(status_, body_));
    sse_.end([this](std::string_view data) { on_sse(data); });
    if (done_) return;
    if (finish_ == FinishReason::none)
      return end_with_error(fmt::format("the server at {} ended the stream without a finish_reason{}",
                                        engine_.url.text(), saw_done_ ? "" : " or [DONE]"));
    end(finish_, "");
  }

  void fail(beast::error_code ec) {
    if (done_) return;
    if (cancelled_) return end(FinishReason::cancelled, "");
    // A server that ends a close-delimited stream just closes the connection.
    if ((ec == http::error::end_of_stream || ec == net::error::eof || ec == http::error::partial_message) &&
        streaming_ok() && (saw_done_ || finish_ != FinishReason::none))
      return complete();
    const bool timed_out = ec == beast::error::timeout;
    std::string message = fmt::format("{} {} failed: {}", phase_, engine_.url.text(), timed_out ? "timed out" : ec.message());
    message[0] = char(std::toupper(static_cast<unsigned char>(message[0])));
    // A server that cannot be reached may be back later; one that broke off an answer failed it.
    end(FinishReason::error, std::move(message),
        timed_out ? ErrorCode::deadline_exceeded : connected_ ? ErrorCode::io_error : ErrorCode::unavailable);
  }

  void end_with_error(std::string message) { end(FinishReason::error, std::move(message)); }

  // `code`: the kind of error, in the buffered exchange's Status or the
  // stream's last event.
  void end(FinishReason reason, std::string error, ErrorCode code = ErrorCode::io_error) {
    if (done_) return;
    done_ = true;
    close();
    if (!x_.streaming) {
      x_.on_reply(reason == FinishReason::cancelled ? Status(ErrorCode::cancelled, "the request was cancelled")
                                                    : Status(code, std::move(error)));
      engine_.calls.erase(x_.id);
      return;
    }
    StreamEvent event;
    event.request_id = x_.id;
    event.finish = reason;
    event.error = std::move(error);
    if (reason == FinishReason::error) event.error_code = code;
    event.prompt_tokens = prompt_tokens_;
    event.completion_tokens = completion_tokens_;
    engine_.finished(x_.id, event, x_.on_event);
  }

  void close() {
    beast::error_code ignored;
    resolver_.cancel();
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_both, ignored);
    beast::get_lowest_layer(stream_).socket().close(ignored);
  }

  RemoteEngine::Impl& engine_;
  Exchange x_;
  tcp::resolver resolver_;
  Stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::response_parser<http::buffer_body>> parser_;
  std::array<char, 16384> chunk_{};
  std::string body_;
  SseSplitter sse_;
  const char* phase_ = "";
  unsigned status_ = 0;
  bool started_ = false;
  bool connected_ = false;
  bool done_ = false;
  bool cancelled_ = false;
  bool saw_done_ = false;
  FinishReason finish_ = FinishReason::none;
  int32_t prompt_tokens_ = 0;
  int32_t completion_tokens_ = 0;
};

json sampling_fields(const SamplingParams& s) {
  json j;
  j["temperature"] = s.temperature;
  j["top_p"] = s.top_p;
  if (s.max_tokens > 0) j["max_tokens"] = s.max_tokens;
  if (s.seed) j["seed"] = *s.seed;
  if (!s.stop.empty()) j["stop"] = s.stop;
  if (s.presence_penalty != 0.0f) j["presence_penalty"] = s.presence_penalty;
  if (s.frequency_penalty != 0.0f) j["frequency_penalty"] = s.frequency_penalty;
  // Beyond OpenAI: vLLM, LMDeploy and hostrun read these; sent only when they change something.
  if (s.top_k > 0) j["top_k"] = s.top_k;
  if (s.min_p > 0.0f) j["min_p"] = s.min_p;
  if (s.repetition_penalty != 1.0f) j["repetition_penalty"] = s.repetition_penalty;
  if (s.ignore_eos) j["ignore_eos"] = true;
  if (s.min_tokens > 0) j["min_tokens"] = s.min_tokens;
  if (!s.skip_special_tokens) j["skip_special_tokens"] = false;
  if (!s.stop_token_ids.empty()) j["stop_token_ids"] = s.stop_token_ids;
  return j;
}

json chat_messages(const std::vector<ChatMessage>& messages) {
  json out = json::array();
  for (const auto& m : messages) {
    if (m.images.empty()) {
      out.push_back({{"role", m.role}, {"content", m.content}});
      continue;
    }
    json parts = json::array();
    for (const auto& image : m.images)
      parts.push_back({{"type", "image_url"},
                       {"image_url", {{"url", "data:" + image.mime_type + ";base64," + base64(image.bytes)}}}});
    if (!m.content.empty()) parts.push_back({{"type", "text"}, {"text", m.content}});
    out.push_back({{"role", m.role}, {"content", std::move(parts)}});
  }
  return out;
}

}  // namespace

void RemoteEngine::Impl::start_call(Exchange exchange) {
  uint64_t id = exchange.id;
  std::shared_ptr<CallBase> call;
  if (url.tls) {
    call = std::make_shared<Call<beast::ssl_stream<beast::tcp_stream>>>(
        *this, std::move(exchange), beast::ssl_stream<beast::tcp_stream>(io, *tls));
  }
  if (!call) call = std::make_shared<Call<beast::tcp_stream>>(*this, std::move(exchange), beast::tcp_stream(io));
  calls[id] = call;
  if (closing) return call->abort();
  call->start();
}

// ---- URLs

std::string ServerUrl::text() const {
  std::string host_text = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return fmt::format("{}://{}:{}{}", tls ? "https" : "http", host_text, port, base_path);
}

bool looks_like_url(std::string_view text) noexcept {
  return text.starts_with("http://") || text.starts_with("https://");
}

Result<ServerUrl> parse_server_url(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status(ErrorCode::invalid_argument,
                  fmt::format("'{}' is not a server URL: {} (expected http://HOST[:PORT][/PATH] or https://...)", text,
                              why));
  };
  ServerUrl url;
  std::string_view rest;
  if (text.starts_with("http://")) {
    rest = text.substr(7);
  } else if (text.starts_with("https://")) {
    url.tls = true;
    rest = text.substr(8);
  } else {
    return bad("the scheme is not http:// or https://");
  }
  size_t path_start = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, path_start);
  std::string_view path = path_start == std::string_view::npos ? std::string_view() : rest.substr(path_start);
  if (authority.find('@') != std::string_view::npos) return bad("credentials in the URL are not supported; use --api-key");
  std::string_view port;
  if (authority.starts_with('[')) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return bad("an IPv6 address without its closing ']'");
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(':')) return bad("text after the IPv6 address that is not :PORT");
      port = after.substr(1);
    }
  } else {
    size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (url.host.empty()) return bad("no host");
  if (!port.empty()) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535)
      return bad(fmt::format("the port '{}' is not a number from 1 to 65535", port));
    url.port = std::to_string(value);
  } else {
    url.port = url.tls ? "443" : "80";
  }
  if (path.find_first_of("?#") != std::string_view::npos) return bad("a query or fragment");
  std::string base(path);
  while (!base.empty() && base.back() == '/') base.pop_back();
  // People paste the OpenAI base URL (".../v1"); the engine adds /v1/... itself.
  if (base.ends_with("/v1")) base.resize(base.size() - 3);
  url.base_path = base;
  return url;
}

// ---- the engine

namespace {

// TLS 1.2 and newer; the system's CAs (or SSL_CERT_FILE / SSL_CERT_DIR, which
// OpenSSL reads), plus `ca_file` when given, e.g. a private CA's certificate.
Result<std::unique_ptr<net::ssl::context>> client_tls(const std::string& ca_file) {
  auto tls = std::make_unique<net::ssl::context>(net::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(tls->native_handle(), TLS1_2_VERSION);
  beast::error_code ec;
  tls->set_default_verify_paths(ec);
  if (ec) return Status(ErrorCode::internal, "OpenSSL cannot use the system's CA certificates: " + ec.message());
  tls->set_verify_mode(net::ssl::verify_peer);
  if (ca_file.empty()) return tls;
  if (!std::ifstream(ca_file))
    return Status(ErrorCode::not_found, fmt::format("the CA file '{}' (--ssl-ca-file) cannot be read: {}", ca_file,
                                                    std::strerror(errno)));
  tls->load_verify_file(ca_file, ec);
  if (ec)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the CA file '{}' (--ssl-ca-file) holds no PEM certificate OpenSSL accepts: {}", ca_file,
                              ec.message()));
  return tls;
}

}  // namespace

Result<std::unique_ptr<RemoteEngine>> RemoteEngine::open(RemoteEngineOptions options) {
  auto url = parse_server_url(options.url);
  if (!url) return url.status();
  std::unique_ptr<RemoteEngine> engine(new RemoteEngine());
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  impl->url = *url;
  if (impl->url.tls) {
    auto tls = client_tls(impl->options.ca_file);
    if (!tls) return tls.status();
    impl->tls = std::move(*tls);
  } else if (!impl->options.ca_file.empty()) {
    return Status(ErrorCode::invalid_argument,
                  fmt::format("a CA file ('{}', --ssl-ca-file) is for an https:// server; {} is plain HTTP",
                              impl->options.ca_file, impl->url.text()));
  }
  impl->thread = std::thread([raw = impl.get()] { raw->io.run(); });
  engine->impl_ = impl;

  auto reply = impl->fetch(http::verb::get, "/v1/models", "",
                           std::max(impl->options.connect_timeout, std::chrono::milliseconds(30'000)));
  if (!reply) return reply.status();
  const std::string where = impl->url.text() + "/v1/models";
  if (reply->status != 200) {
    std::string hint = reply->status == 401 && impl->options.api_key.empty() ? " (the server wants an API key: --api-key)"
                                                                             : "";
    return Status(error_code_of(reply->status, reply->body),
                  fmt::format("GET {} answered {}: {}{}", where, reply->status, server_error_message(reply->body), hint));
  }
  Result<json> parsed = parse_json_bounded<json>(reply->body, kReplyJsonLimits, "the reply");
  if (!parsed) return Status(ErrorCode::corrupt_data, fmt::format("GET {}: {}", where, parsed.status().message()));
  json& models = *parsed;
  if (!models.is_object() || !models.contains("data") || !models["data"].is_array())
    return Status(ErrorCode::corrupt_data,
                  fmt::format("GET {}: expected a JSON object with a \"data\" array of models, found '{}'", where,
                              clip(reply->body, 200)));
  std::vector<std::string> names;
  const json* chosen = nullptr;
  for (const auto& model : models["data"]) {
    if (!model.is_object() || !model.contains("id") || !model["id"].is_string()) continue;
    names.push_back(model["id"].get<std::string>());
    if (!chosen && (impl->options.model.empty() || names.back() == impl->options.model)) chosen = &model;
  }
  if (!chosen) {
    std::string listed;
    for (const auto& n : names) listed += (listed.empty() ? "" : ", ") + n;
    return Status(ErrorCode::not_found,
                  impl->options.model.empty()
                      ? fmt::format("GET {} lists no model", where)
                      : fmt::format("GET {} does not list the model '{}' (it lists: {})", where, impl->options.model,
                                    listed.empty() ? "nothing" : listed));
  }
  impl->info.model_name = (*chosen)["id"].get<std::string>();
  impl->info.remote = true;
  // vLLM and hostrun report the context length; LMDeploy and OpenAI do not (0: unknown).
  for (const char* key : {"max_model_len", "context_length", "max_context_length"}) {
    auto it = chosen->find(key);
    if (it != chosen->end() && it->is_number_integer()) {
      impl->info.session_len = it->get<int32_t>();
      break;
    }
  }
  return engine;
}

RemoteEngine::~RemoteEngine() {
  if (impl_) impl_->shut_down();
}

Result<uint64_t> RemoteEngine::submit(GenerationRequest request, StreamCallback on_event) noexcept {
  Impl& impl = *impl_;
  std::optional<Exchange> exchange;
  Status built = guard([&]() -> Status {
    if (impl.closing) return Status(ErrorCode::unavailable, "the remote engine is shutting down");
    // What the server would refuse for certain, refused at once with its kind:
    // a stream's refusal reaches the caller only as its last event's message.
    const int32_t session_len = impl.info.session_len;
    if (session_len > 0 && request.sampling.max_tokens >= session_len)
      return Status(ErrorCode::context_length_exceeded,
                    fmt::format("max_tokens is {}, but {} holds at most {} tokens (prompt and reply) per request",
                                request.sampling.max_tokens, impl.url.text(), session_len));
    json body = sampling_fields(request.sampling);
    body["model"] = impl.info.model_name;
    body["stream"] = true;
    // Usage in the last chunk: hostrun, vLLM and LMDeploy send it when asked.
    body["stream_options"] = {{"include_usage", true}};
    if (!request.user.empty()) body["user"] = request.user;
    bool chat = false;
    if (auto* messages = std::get_if<std::vector<ChatMessage>>(&request.input)) {
      if (messages->empty()) return Status(ErrorCode::invalid_argument, "a chat request needs at least one message");
      body["messages"] = chat_messages(*messages);
      chat = true;
    } else if (auto* text = std::get_if<std::string>(&request.input)) {
      body["prompt"] = *text;
    } else {
      body["prompt"] = std::get<std::vector<TokenId>>(request.input);
    }
    exchange.emplace();
    exchange->id = impl.next_id++;
    exchange->chat = chat;
    exchange->streaming = true;
    exchange->on_event = std::move(on_event);
    exchange->read_timeout = impl.options.idle_timeout;
    exchange->request =
        impl.make_request(http::verb::post, chat ? "/v1/chat/completions" : "/v1/completions", body.dump());
    exchange->request.set(http::field::accept, "text/event-stream");
    return Status();
  });
  if (!built) return built;
  uint64_t id = exchange->id;
  {
    std::lock_guard lock(impl.counters_mutex);
    impl.counters.requests_submitted++;
    impl.counters.running++;
  }
  net::post(impl.io, [&impl, x = std::move(*exchange)]() mutable { impl.start_call(std::move(x)); });
  return id;
}

void RemoteEngine::cancel(uint64_t request_id) noexcept {
  Impl* impl = impl_.get();
  try {
    net::post(impl->io, [impl, request_id] {
      auto it = impl->calls.find(request_id);
      if (it != impl->calls.end()) {
        auto call = it->second;  // abort() may erase the entry
        call->abort();
      }
    });
  } catch (...) {
  }
}

EngineInfo RemoteEngine::info() const noexcept { return impl_->info; }

EngineCounters RemoteEngine::counters() const noexcept {
  std::lock_guard lock(impl_->counters_mutex);
  return impl_->counters;
}

const ServerUrl& RemoteEngine::url() const noexcept { return impl_->url; }

}  // namespace hostrun::core
