// libFuzzer target for the HTTP request reader (plugins/http_common). The
// input is what a client sends on one connection; it goes through the same
// steps as a connection in http_server.cpp: find the head, parse_head()
// (bytes, Beast, framing), the body through Beast, make_request(), then the
// access rules, request after request while the connection stays open.
//
// Beyond crashes and ASan reports, every request the reader accepts is
// checked against a plain line-by-line reading of its head's bytes, which is
// how a proxy in front of the server might read them. They must agree on
// what decides where the request ends (request smuggling lives in any
// disagreement):
//   - as many header lines as fields the request has;
//   - at most one Transfer-Encoding line, whose value is "chunked", only in
//     HTTP/1.1, never beside a Content-Length line;
//   - at most one Content-Length line, digits only, equal to the body's size;
//   - neither line: no body; HTTP/1.1: exactly one Host line.
#include <algorithm>
#include <boost/asio/buffer.hpp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "ascii.hpp"
#include "request_reader.hpp"
#include "request_rules.hpp"

namespace {

using namespace hostrun::http;
namespace bhttp = boost::beast::http;

[[noreturn]] void disagree(const char* what, std::string_view head) {
  std::fprintf(stderr, "the reader accepted a request that a line-by-line reading frames differently: %s\n--- head ---\n%.*s\n",
               what, int(head.size()), head.data());
  std::abort();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The head as a proxy reading it line by line would: name before the first
// colon, value after it, lines split at CRLF.
struct LineReading {
  unsigned version = 11;
  size_t fields = 0;
  std::vector<std::string_view> transfer_encodings, content_lengths;
  size_t hosts = 0;
};

LineReading read_lines(std::string_view head) {
  LineReading out;
  size_t end = head.find("\r\n");
  std::string_view request_line = head.substr(0, end);
  if (request_line.ends_with("HTTP/1.0")) out.version = 10;
  for (size_t start = end + 2; start < head.size();) {
    end = head.find("\r\n", start);
    std::string_view line = head.substr(start, end - start);
    start = end + 2;
    if (line.empty()) break;
    ++out.fields;
    size_t colon = line.find(':');
    std::string name = ascii_lower(line.substr(0, colon));
    std::string_view value = colon == std::string_view::npos ? std::string_view() : trim(line.substr(colon + 1));
    if (name == "transfer-encoding") out.transfer_encodings.push_back(value);
    if (name == "content-length") out.content_lengths.push_back(value);
    if (name == "host") ++out.hosts;
  }
  return out;
}

void check_agreement(std::string_view head, const Request& request) {
  LineReading lines = read_lines(head);
  if (lines.fields != request.headers.size()) disagree("the number of header lines", head);
  if (lines.transfer_encodings.size() > 1) disagree("more than one Transfer-Encoding line", head);
  if (lines.content_lengths.size() > 1) disagree("more than one Content-Length line", head);
  if (!lines.transfer_encodings.empty()) {
    if (!iequals(lines.transfer_encodings[0], "chunked")) disagree("a Transfer-Encoding other than chunked", head);
    if (lines.version != 11) disagree("Transfer-Encoding in HTTP/1.0", head);
    if (!lines.content_lengths.empty()) disagree("Transfer-Encoding beside Content-Length", head);
  }
  if (!lines.content_lengths.empty()) {
    std::string_view digits = lines.content_lengths[0];
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string_view::npos)
      disagree("a Content-Length that is not a plain number", head);
    digits.remove_prefix(std::min(digits.find_first_not_of('0'), digits.size()));  // 1*DIGIT allows leading zeros
    // More than 18 digits is far over any body limit, so such a request cannot have been read.
    if (digits.size() > 18 || (digits.empty() ? 0 : std::stoull(std::string(digits))) != request.body.size())
      disagree("a body of another length", head);
  }
  if (lines.transfer_encodings.empty() && lines.content_lengths.empty() && !request.body.empty())
    disagree("a body with neither Transfer-Encoding nor Content-Length", head);
  if (lines.version == 11 && lines.hosts != 1) disagree("an HTTP/1.1 request without exactly one Host line", head);
}

const ServerOptions& options() {
  static const ServerOptions o = [] {
    ServerOptions made;
    made.max_header_bytes = 8192;  // small, so the limits are reached too
    made.max_body_bytes = 8192;
    return made;
  }();
  return o;
}

const AccessRules& rules() {
  static const AccessRules r{"127.0.0.1", "fuzz-host", {"chat.example.test"}, {"https://app.example.test"},
                             {"application/json"}};
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  static const std::vector<std::string> keys = {"fuzz-key-one", "fuzz-key-two"};
  for (;;) {
    size_t end = head_end(input);
    if (end == std::string_view::npos) return 0;  // the connection waits for more, or answers 431
    std::string_view head = input.substr(0, end);
    input.remove_prefix(end);
    RequestParser parser;
    limit_parser(parser, options());
    if (parse_head(parser, head, options())) return 0;  // refused: the connection closes
    std::vector<Header> fields = header_fields(parser);
    while (!parser.is_done() && !input.empty()) {
      boost::beast::error_code error;
      size_t used = parser.put(boost::asio::buffer(input.data(), input.size()), error);
      input.remove_prefix(used);
      if (error == bhttp::error::need_more) break;
      if (error) {
        if (!parse_error_refusal(error, options())) disagree("a body error with no answer", head);
        return 0;
      }
      if (used == 0) break;
    }
    if (!parser.is_done()) return 0;  // the rest never came: the connection ends without a request
    bool keep_alive = parser.get().keep_alive();
    Request request = make_request(parser, std::move(fields), "fuzz");
    check_agreement(head, request);
    (void)check_host(request, rules());
    (void)check_origin(request, rules());
    (void)check_content_type(request, rules());
    (void)bearer_key_problem(request, keys);
    if (!keep_alive) return 0;
  }
}
