// What a request must satisfy before any route sees it. Plain functions over
// the parsed head, without Boost, so the unit tests and the request fuzzer
// call exactly what the server calls.
//
// Framing (RFC 9112 section 6): a body whose length this server and a proxy
// in front of it could read differently lets a request hide inside another
// one's body (request smuggling). So the only transfer coding accepted is
// exactly `chunked`, never beside Content-Length, never in HTTP/1.0;
// Content-Length is one number given once; HTTP/1.1 carries exactly one Host.
// Anything else is 400 and the connection closes without reading the body.
//
// Access: a web page on another site can make a browser send requests here
// (cross-site requests), and a page whose DNS name is re-pointed at this
// machine can read the answers (DNS rebinding). The Host check refuses names
// this server was not told it answers to; the Origin check refuses requests a
// browser sent for another site's page; requiring a JSON content type on
// bodies makes a browser ask (a CORS preflight) before it may send one.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "http_server.hpp"

namespace hostrun::http {

// A request refused before routing: the status, and a message naming the
// header, what was expected and what was found.
struct Refusal {
  int status = 400;
  std::string message;
};

// The raw head (request line to blank line): no header line may start with a
// space or tab. That is obsolete line folding (RFC 9112 section 5.2), which a
// parser may unfold into the line above; a proxy that reads it otherwise
// would see, e.g., "Transfer-Encoding:" and " chunked" as two lines.
std::optional<Refusal> check_head_bytes(std::string_view head);

// `http_version` is 10 or 11; `headers` have lower-case names, in the order sent.
std::optional<Refusal> check_framing(unsigned http_version, std::span<const Header> headers);

struct AccessRules {
  // The address or name the server listens on (ServerOptions::address).
  std::string server_address;
  // This machine's host name, accepted as a Host like the bound address.
  std::string machine_name;
  // More names the server answers to (a proxy's public name); "*": any Host.
  std::vector<std::string> allowed_hosts;
  // Origins other than the server's own that may call it (CORS allow_origins); "*": any.
  std::vector<std::string> allowed_origins;
  // Media types a request with a body method (POST, PUT, PATCH, DELETE) must declare.
  std::vector<std::string> body_content_types;
  // Paths that take multipart/form-data besides (file uploads); every other
  // path keeps to body_content_types.
  std::vector<std::string> multipart_paths;
};

// Host: accepted when absent (HTTP/1.0; check_framing refuses it in 1.1), an
// IP address, localhost or a name under .localhost, the bound name, this
// machine's name, or one of allowed_hosts. An address is safe to accept: a
// browser sends one as Host only for a page loaded from that address, and a
// rebinding attack needs a DNS name. 403 otherwise, 400 when malformed.
std::optional<Refusal> check_host(const Request& request, const AccessRules& rules);

// Origin: accepted when absent, when its host:port is the request's Host (the
// server's own page; the scheme is not compared, since a TLS proxy changes
// it), or when allowed_origins holds it or "*". 403 otherwise.
std::optional<Refusal> check_origin(const Request& request, const AccessRules& rules);

// Content-Type of a request with a body method: its media type (before any
// parameters, case-insensitive) must be one of body_content_types, or
// multipart/form-data on one of multipart_paths. 415 otherwise.
std::optional<Refusal> check_content_type(const Request& request, const AccessRules& rules);

// Whether `presented` equals `secret`, in a time that depends on the secret's
// length only, not on where the two first differ.
bool constant_time_equals(std::string_view presented, std::string_view secret) noexcept;
// Whether `presented` is one of `keys`; every key is compared, match or not,
// so the time taken does not say which key matched or how much of one.
bool key_matches(std::string_view presented, std::span<const std::string> keys) noexcept;

// Refuses a key list a client could never match or could match by sending
// nothing: an empty key. `setting` names where the keys came from.
Status validate_api_keys(std::span<const std::string> keys, std::string_view setting);

// The 401 message for a request whose `Authorization: Bearer KEY` is missing,
// malformed or not one of `keys`; nothing when it carries one of them.
std::optional<std::string> bearer_key_problem(const Request& request, std::span<const std::string> keys);

}  // namespace hostrun::http
