// The checks of request_rules.hpp.
#include "request_rules.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>

#include "ascii.hpp"

namespace hostrun::http {

namespace {

// A value from the request, for a message: bounded, so a 64 KiB header does
// not become a 64 KiB error (the JSON encoder escapes what is left).
std::string quoted(std::string_view value) {
  constexpr size_t kShown = 80;
  if (value.size() <= kShown) return fmt::format("'{}'", value);
  return fmt::format("'{}...' ({} bytes)", value.substr(0, kShown), value.size());
}

std::string_view trim_whitespace(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool listed(std::string_view wanted, const std::vector<std::string>& items) {
  for (const auto& item : items)
    if (item == "*" || iequals(item, wanted)) return true;
  return false;
}

std::string list_text(const std::vector<std::string>& items) {
  if (items.empty()) return "none";
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

struct HostPort {
  std::string host;  // lower case, without brackets
  bool is_address = false;
};

// Host = uri-host [ ":" port ]; uri-host is a bracketed IPv6 address, an IPv4
// address or a registered name. Names are checked against the letters DNS
// and /etc/hosts names use, so nothing odd reaches a comparison or a message.
std::optional<HostPort> parse_host(std::string_view value) {
  auto port_ok = [](std::string_view port) {
    if (port.empty() || port.size() > 5) return false;
    for (char c : port)
      if (c < '0' || c > '9') return false;
    return true;
  };
  HostPort out;
  if (value.starts_with('[')) {
    size_t close = value.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    std::string_view rest = value.substr(close + 1);
    if (!rest.empty() && !(rest.front() == ':' && port_ok(rest.substr(1)))) return std::nullopt;
    out.host = ascii_lower(value.substr(1, close - 1));
    in6_addr address{};
    if (inet_pton(AF_INET6, out.host.c_str(), &address) != 1) return std::nullopt;
    out.is_address = true;
    return out;
  }
  size_t colon = value.find(':');
  if (colon != std::string_view::npos && !port_ok(value.substr(colon + 1))) return std::nullopt;
  out.host = ascii_lower(value.substr(0, colon));
  if (out.host.empty()) return std::nullopt;
  for (char c : out.host)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_')) return std::nullopt;
  in_addr address{};
  out.is_address = inet_pton(AF_INET, out.host.c_str(), &address) == 1;
  return out;
}

}  // namespace

std::optional<Refusal> check_head_bytes(std::string_view head) {
  for (size_t line = head.find("\r\n"); line != std::string_view::npos; line = head.find("\r\n", line + 2)) {
    if (line + 2 < head.size() && (head[line + 2] == ' ' || head[line + 2] == '\t'))
      return Refusal{400, fmt::format("header line {} starts with a space or tab (obsolete line folding, refused "
                                      "by RFC 9112 section 5.2); send each header on one line",
                                      std::count(head.begin(), head.begin() + ptrdiff_t(line), '\n') + 2)};
  }
  return std::nullopt;
}

std::optional<Refusal> check_framing(unsigned http_version, std::span<const Header> headers) {
  std::vector<std::string_view> transfer_encodings, content_lengths;
  size_t hosts = 0;
  for (const auto& h : headers) {
    if (h.name == "transfer-encoding")
      transfer_encodings.push_back(h.value);
    else if (h.name == "content-length")
      content_lengths.push_back(h.value);
    else if (h.name == "host")
      ++hosts;
  }
  if (!transfer_encodings.empty()) {
    std::string found;
    for (auto value : transfer_encodings) found += (found.empty() ? "" : ", ") + std::string(value);
    if (http_version < 11)
      return Refusal{400, fmt::format("Transfer-Encoding is not allowed in an HTTP/1.0 request (found {}); "
                                      "send Content-Length", quoted(found))};
    // Exactly the word: even the empty list elements RFC 9110 lets a recipient
    // skip (", chunked") are refused, since a proxy may not skip them.
    if (transfer_encodings.size() != 1 || !iequals(trim_whitespace(transfer_encodings[0]), "chunked"))
      return Refusal{400, fmt::format("Transfer-Encoding must be exactly 'chunked', in one header; found {} in {} "
                                      "header(s)", quoted(found), transfer_encodings.size())};
    if (!content_lengths.empty())
      return Refusal{400, fmt::format("a request may carry Transfer-Encoding or Content-Length, not both "
                                      "(found Transfer-Encoding {} and Content-Length {})",
                                      quoted(found), quoted(content_lengths[0]))};
  }
  if (content_lengths.size() > 1)
    return Refusal{400, fmt::format("Content-Length must be given once; found {} Content-Length headers",
                                    content_lengths.size())};
  if (content_lengths.size() == 1 && content_lengths[0].find(',') != std::string_view::npos)
    return Refusal{400, fmt::format("Content-Length must be one number; found {}", quoted(content_lengths[0]))};
  if (http_version >= 11 && hosts != 1)
    return Refusal{400, fmt::format("an HTTP/1.1 request must carry exactly one Host header; found {}", hosts)};
  return std::nullopt;
}

std::optional<Refusal> check_host(const Request& request, const AccessRules& rules) {
  const std::string* value = request.header("host");
  if (!value) return std::nullopt;
  auto host = parse_host(*value);
  if (!host) return Refusal{400, fmt::format("the Host header {} is not a host[:port]", quoted(*value))};
  if (host->is_address || host->host == "localhost" || host->host.ends_with(".localhost")) return std::nullopt;
  if (iequals(host->host, rules.server_address) || iequals(host->host, rules.machine_name)) return std::nullopt;
  for (const auto& allowed : rules.allowed_hosts) {
    if (allowed == "*") return std::nullopt;
    // An entry may carry a port ("chat.example.com:443"); names are compared without it.
    auto entry = parse_host(allowed);
    if (entry && entry->host == host->host) return std::nullopt;
  }
  // Which names would do is not said: the answer may be read by the very page that sent it.
  return Refusal{403, fmt::format("the Host header {} is not a name this server answers to; expected an IP address, "
                                  "localhost, the server's own name or one of --allowed-hosts (where a proxy's "
                                  "public name goes)", quoted(*value))};
}

std::optional<Refusal> check_origin(const Request& request, const AccessRules& rules) {
  const std::string* origin = request.header("origin");
  if (!origin || listed(*origin, rules.allowed_origins)) return std::nullopt;
  size_t scheme_end = origin->find("://");
  const std::string* host = request.header("host");
  if (scheme_end != std::string::npos && host && iequals(std::string_view(*origin).substr(scheme_end + 3), *host))
    return std::nullopt;
  return Refusal{403, fmt::format("a cross-origin request from Origin {} (this server is Host {}) is refused; "
                                  "origins allowed besides the server's own: {} (--allow-origins)",
                                  quoted(*origin), host ? quoted(*host) : std::string("(none)"),
                                  list_text(rules.allowed_origins))};
}

std::optional<Refusal> check_content_type(const Request& request, const AccessRules& rules) {
  // POST is the only method with a body that a browser sends to another site without asking it first.
  if (request.method != "POST" || rules.body_content_types.empty()) return std::nullopt;
  const std::string* content_type = request.header("content-type");
  std::string_view media_type = content_type ? trim_whitespace(std::string_view(*content_type).substr(
                                                   0, content_type->find(';')))
                                             : std::string_view();
  for (const auto& accepted : rules.body_content_types)
    if (iequals(media_type, accepted)) return std::nullopt;
  if (iequals(media_type, "multipart/form-data"))
    for (const auto& path : rules.multipart_paths)
      if (request.path == path) return std::nullopt;
  return Refusal{415, fmt::format("a POST body must be sent as Content-Type {}; found {} (forms and text/plain are "
                                  "refused because any web site can make a browser send them here)",
                                  list_text(rules.body_content_types),
                                  content_type ? quoted(*content_type) : std::string("none"))};
}

bool constant_time_equals(std::string_view presented, std::string_view secret) noexcept {
  // volatile: the compiler may not turn the loop into one that stops at the first difference.
  volatile unsigned char difference = presented.size() == secret.size() ? 0 : 1;
  for (size_t i = 0; i < secret.size(); ++i) {
    unsigned char mine = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    difference = difference | (mine ^ static_cast<unsigned char>(secret[i]));
  }
  return difference == 0;
}

bool key_matches(std::string_view presented, std::span<const std::string> keys) noexcept {
  unsigned matched = 0;
  for (const auto& key : keys) matched |= constant_time_equals(presented, key) ? 1u : 0u;
  return matched != 0;
}

Status validate_api_keys(std::span<const std::string> keys, std::string_view setting) {
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i].empty())
      return Status(ErrorCode::invalid_argument,
                    fmt::format("{}: key {} of {} is empty; expected non-empty keys", setting, i + 1, keys.size()));
  return Status();
}

std::optional<std::string> bearer_key_problem(const Request& request, std::span<const std::string> keys) {
  if (keys.empty()) return std::nullopt;
  const std::string* authorization = request.header("authorization");
  if (!authorization) return "You didn't provide an API key; send 'Authorization: Bearer KEY'";
  std::string_view value = *authorization;
  // The scheme is case-insensitive (RFC 9110 section 11.1), followed by one or more spaces.
  size_t space = value.find(' ');
  if (space == std::string_view::npos || !iequals(value.substr(0, space), "bearer"))
    return "The Authorization header must be 'Bearer KEY'";
  std::string_view key = value.substr(space);
  while (key.starts_with(' ')) key.remove_prefix(1);
  if (key.empty()) return "The Authorization header must be 'Bearer KEY'";
  if (!key_matches(key, keys)) return "Incorrect API key provided";
  return std::nullopt;
}

}  // namespace hostrun::http
