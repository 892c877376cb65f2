// The Beast side of reading a request (request_reader.hpp).
#include "request_reader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <cstdint>

#include "ascii.hpp"

namespace hostrun::http {

namespace bhttp = boost::beast::http;

void limit_parser(RequestParser& parser, const ServerOptions& options) {
  parser.header_limit(uint32_t(std::min<size_t>(options.max_header_bytes, UINT32_MAX)));
  parser.body_limit(options.max_body_bytes);
}

std::vector<Header> header_fields(const RequestParser& parser) {
  std::vector<Header> fields;
  for (const auto& field : parser.get()) fields.push_back({ascii_lower(field.name_string()), std::string(field.value())});
  return fields;
}

bool starts_tls_handshake(std::string_view bytes) noexcept {
  constexpr char kHandshakeRecord = 0x16;
  return !bytes.empty() && bytes.front() == kHandshakeRecord;
}

size_t head_end(std::string_view buffered, size_t searched) {
  // The blank line may have begun in what was searched before.
  size_t end = buffered.find("\r\n\r\n", searched < 3 ? 0 : searched - 3);
  return end == std::string_view::npos ? end : end + 4;
}

std::optional<Refusal> parse_head(RequestParser& parser, std::string_view head, const ServerOptions& options) {
  if (auto refusal = check_head_bytes(head)) return refusal;
  boost::beast::error_code error;
  parser.put(boost::asio::buffer(head.data(), head.size()), error);
  if (!error && !parser.is_header_done()) error = bhttp::error::partial_message;
  if (error) return parse_error_refusal(error, options).value_or(Refusal{400, "malformed HTTP request head: " + error.message()});
  return check_framing(parser.get().version(), header_fields(parser));
}

std::optional<Refusal> parse_error_refusal(boost::beast::error_code error, const ServerOptions& options) {
  if (error == bhttp::error::body_limit)
    return Refusal{413, fmt::format("the request body is over the limit of {} bytes", options.max_body_bytes)};
  if (error == bhttp::error::header_limit) return Refusal{431, "the request headers are too large"};
  // Beast refuses some framing itself, while reading the head; say what our own check would have said.
  if (error == bhttp::error::bad_transfer_encoding)
    return Refusal{400, "Transfer-Encoding must be exactly 'chunked', in one header, and never beside "
                        "Content-Length; found a repeated or conflicting Transfer-Encoding"};
  if (error == bhttp::error::bad_content_length)
    return Refusal{400, "Content-Length must be one decimal number, given once, and never beside "
                        "Transfer-Encoding; found an invalid, repeated or conflicting Content-Length"};
  // end_of_stream: the connection closed between requests, so there is nothing to answer.
  if (error.category() == bhttp::make_error_code(bhttp::error::bad_method).category() &&
      error != bhttp::error::end_of_stream)
    return Refusal{400, "malformed HTTP request: " + error.message()};
  return std::nullopt;
}

Request make_request(RequestParser& parser, std::vector<Header> fields, std::string remote_address) {
  auto message = parser.release();
  Request request;
  request.method = std::string(message.method_string());
  request.target = std::string(message.target());
  size_t question = request.target.find('?');
  request.path = request.target.substr(0, question);
  if (question != std::string::npos) request.query = request.target.substr(question + 1);
  request.headers = std::move(fields);
  request.body = std::move(message.body());
  request.remote_address = std::move(remote_address);
  return request;
}

}  // namespace hostrun::http
