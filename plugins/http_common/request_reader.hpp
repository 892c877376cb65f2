// How a connection reads one request with Beast, in pieces the request fuzzer
// (tests/serving/fuzz_http_request.cpp) drives the same way: the parser's
// limits, the head's checks before any body byte is read, what a parse error
// answers, and the Request a handler sees. Internal to http_common (it
// includes Boost); frontends see http_server.hpp only.
#pragma once

#include <boost/beast/core/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <optional>
#include <string>
#include <vector>

#include "http_server.hpp"
#include "request_rules.hpp"

namespace hostrun::http {

using RequestParser = boost::beast::http::request_parser<boost::beast::http::string_body>;

// A fresh parser's limits, from the server's options.
void limit_parser(RequestParser& parser, const ServerOptions& options);

// The head's fields with lower-case names, in the order sent.
std::vector<Header> header_fields(const RequestParser& parser);

// Whether a connection's first bytes are a TLS handshake record (type 22),
// which no HTTP request starts with: how a TLS port tells a plain-HTTP client
// and a plain port a TLS one.
bool starts_tls_handshake(std::string_view bytes) noexcept;

// Where the head in `buffered` ends (just past its blank line), or npos.
// `searched` is how far an earlier call on the same buffer looked.
size_t head_end(std::string_view buffered, size_t searched = 0);

// Parses a complete head (the bytes up to and including its blank line): its
// bytes are checked first, then Beast parses it, then its framing is checked.
// Nothing when the body may be read; otherwise the answer, after which the
// connection closes.
std::optional<Refusal> parse_head(RequestParser& parser, std::string_view head, const ServerOptions& options);

// The answer to a request Beast could not parse: 413 over the body limit, 431
// over the header limit, 400 for a malformed one (naming Transfer-Encoding or
// Content-Length when that is what Beast refused). Nothing for errors of the
// connection itself (end of stream, reset, timeout), which are not answered.
std::optional<Refusal> parse_error_refusal(boost::beast::error_code error, const ServerOptions& options);

// The request a handler sees, from a complete message and the fields of its
// head, taken when the head was parsed: trailer fields are not headers.
Request make_request(RequestParser& parser, std::vector<Header> fields, std::string remote_address);

}  // namespace hostrun::http
