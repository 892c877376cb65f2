#include "fetch.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <optional>

#include "ascii.hpp"

namespace hostrun::http {

namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace bhttp = boost::beast::http;
using tcp = net::ip::tcp;

struct Url {
  bool tls = false;
  std::string host;  // without brackets
  std::string port;
  std::string target;  // path and query, "/" at least
};

std::optional<Url> parse_url(std::string_view text) {
  Url url;
  if (text.size() > 8 && iequals(text.substr(0, 8), "https://")) {
    url.tls = true;
    text.remove_prefix(8);
  } else if (text.size() > 7 && iequals(text.substr(0, 7), "http://")) {
    text.remove_prefix(7);
  } else {
    return std::nullopt;
  }
  const size_t slash = text.find_first_of("/?#");
  std::string_view authority = text.substr(0, slash);
  std::string_view rest = slash == std::string_view::npos ? std::string_view() : text.substr(slash);
  if (authority.find('@') != std::string_view::npos) return std::nullopt;  // no credentials in URLs
  std::string_view port;
  if (authority.starts_with("[")) {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return std::nullopt;
      port = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port = authority.substr(colon + 1);
  }
  if (url.host.empty() || url.host.find_first_of(" \t\r\n/\\") != std::string::npos) return std::nullopt;
  if (!port.empty() && (port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos ||
                        std::stoi(std::string(port)) > 65535 || std::stoi(std::string(port)) == 0))
    return std::nullopt;
  url.port = port.empty() ? (url.tls ? "443" : "80") : std::string(port);
  rest = rest.substr(0, rest.find('#'));
  url.target = rest.empty() || rest.front() == '?' ? "/" + std::string(rest) : std::string(rest);
  if (url.target.find_first_of(" \t\r\n") != std::string::npos) return std::nullopt;
  return url;
}

bool allowed(const std::string& host, const FetchLimits& limits) {
  for (const auto& h : limits.allowed_hosts)
    if (h == "*" || iequals(h, host)) return true;
  return false;
}

struct Answer {
  unsigned status = 0;
  std::string location;
  std::vector<uint8_t> body;
};

// One GET on its own connection. Errors are thrown as Error.
template <typename Stream>
net::awaitable<Answer> exchange(Stream& stream, const Url& url, size_t max_bytes) {
  bhttp::request<bhttp::empty_body> request{bhttp::verb::get, url.target, 11};
  request.set(bhttp::field::host, url.host);
  request.set(bhttp::field::user_agent, "hostrun");
  request.set(bhttp::field::accept, "image/*");
  co_await bhttp::async_write(stream, request, net::use_awaitable);
  beast::flat_buffer buffer;
  bhttp::response_parser<bhttp::vector_body<uint8_t>> parser;
  parser.body_limit(max_bytes);
  parser.header_limit(64 * 1024);
  co_await bhttp::async_read(stream, buffer, parser, net::use_awaitable);
  Answer answer;
  answer.status = parser.get().result_int();
  if (auto location = parser.get().find(bhttp::field::location); location != parser.get().end())
    answer.location = std::string(location->value());
  answer.body = std::move(parser.get().body());
  co_return answer;
}

net::awaitable<Answer> get(const Url& url, net::ssl::context& tls, size_t max_bytes) {
  auto executor = co_await net::this_coro::executor;
  tcp::resolver resolver(executor);
  auto endpoints = co_await resolver.async_resolve(url.host, url.port, net::use_awaitable);
  if (!url.tls) {
    beast::tcp_stream stream(executor);
    co_await stream.async_connect(endpoints, net::use_awaitable);
    co_return co_await exchange(stream, url, max_bytes);
  }
  beast::ssl_stream<beast::tcp_stream> stream(executor, tls);
  SSL* ssl = stream.native_handle();
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (X509_VERIFY_PARAM_set1_ip_asc(param, url.host.c_str()) != 1) {
    ERR_clear_error();
    if (!SSL_set_tlsext_host_name(ssl, url.host.c_str()) || X509_VERIFY_PARAM_set1_host(param, url.host.c_str(), 0) != 1)
      throw Error(ErrorCode::internal, "cannot set the TLS host name");
  }
  co_await beast::get_lowest_layer(stream).async_connect(endpoints, net::use_awaitable);
  co_await stream.async_handshake(net::ssl::stream_base::client, net::use_awaitable);
  co_return co_await exchange(stream, url, max_bytes);
}

// A Location against the URL it answered: absolute, or a path on the same origin.
std::optional<Url> resolve_location(const Url& from, const std::string& location) {
  if (auto absolute = parse_url(location)) return absolute;
  if (!location.starts_with("/") || location.starts_with("//")) return std::nullopt;
  Url next = from;
  next.target = location;
  return next;
}

}  // namespace

bool fetch_allowed(std::string_view url, const FetchLimits& limits) {
  auto parsed = parse_url(url);
  return parsed && allowed(parsed->host, limits);
}

Result<std::vector<uint8_t>> fetch_url(std::string_view text, const FetchLimits& limits) {
  std::optional<Url> url = parse_url(text);
  if (!url) return Status(ErrorCode::invalid_argument, "not an http(s) URL this server can fetch");
  if (!allowed(url->host, limits))
    return Status(ErrorCode::permission_denied,
                  "host '" + url->host + "' is not one this server fetches images from (image_url_hosts)");
  net::ssl::context tls(net::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_2_VERSION);
  beast::error_code ec;
  tls.set_default_verify_paths(ec);
  tls.set_verify_mode(net::ssl::verify_peer);
  std::optional<Result<std::vector<uint8_t>>> result;
  // Declared last, destroyed first: a fetch cut off by the deadline leaves
  // operations whose frames refer to the two above.
  net::io_context io;
  net::co_spawn(
      io,
      [&]() -> net::awaitable<void> {
        Url at = *url;
        for (int redirects = 0;; ++redirects) {
          Answer answer = co_await get(at, tls, limits.max_bytes);
          if (answer.status == 200) {
            result = std::move(answer.body);
            co_return;
          }
          const bool redirect = answer.status == 301 || answer.status == 302 || answer.status == 303 ||
                                answer.status == 307 || answer.status == 308;
          if (!redirect) {
            result = Status(ErrorCode::unavailable, "the server answered HTTP " + std::to_string(answer.status));
            co_return;
          }
          if (redirects == limits.max_redirects) {
            result = Status(ErrorCode::resource_exhausted,
                            "more than " + std::to_string(limits.max_redirects) + " redirects");
            co_return;
          }
          std::optional<Url> next = resolve_location(at, answer.location);
          if (!next) {
            result = Status(ErrorCode::unavailable, "a redirect to '" + answer.location + "', which is no http(s) URL");
            co_return;
          }
          if (!allowed(next->host, limits)) {
            result = Status(ErrorCode::permission_denied, "a redirect to host '" + next->host +
                                                              "', not one this server fetches images from");
            co_return;
          }
          at = std::move(*next);
        }
      },
      [&](std::exception_ptr failure) {
        if (!failure || result) return;
        try {
          std::rethrow_exception(failure);
        } catch (const beast::system_error& e) {
          if (e.code() == bhttp::error::body_limit)
            result = Status(ErrorCode::resource_exhausted,
                            "the image is larger than " + std::to_string(limits.max_bytes) + " bytes");
          else
            result = Status(ErrorCode::unavailable, "fetching it failed: " + e.code().message());
        } catch (const Error& e) {
          result = e.status();
        } catch (const std::exception& e) {
          result = Status(ErrorCode::unavailable, std::string("fetching it failed: ") + e.what());
        }
      });
  io.run_for(limits.timeout);
  if (!result)
    return Status(ErrorCode::deadline_exceeded,
                  "no answer within " + std::to_string(limits.timeout.count()) + " ms (redirects included)");
  return std::move(*result);
}

}  // namespace hostrun::http
