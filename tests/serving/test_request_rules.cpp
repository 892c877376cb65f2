// plugins/http_common/request_rules: the framing, Host, Origin and
// Content-Type rules on parsed requests, and the API-key comparison.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "multipart.hpp"
#include "request_rules.hpp"
#include "uploads.hpp"

using namespace hostrun;
using namespace hostrun::http;

namespace {

Request request_with(std::vector<Header> headers, std::string method = "GET") {
  // The rules read the method and the headers only.
  Request r;
  r.method = std::move(method);
  r.headers = std::move(headers);
  return r;
}

// The status a rule gives, 0 when it lets the request through.
int status_of(const std::optional<Refusal>& refusal) { return refusal ? refusal->status : 0; }

}  // namespace

TEST_SUITE("request_rules") {
  TEST_CASE("framing: exactly one 'chunked', never beside Content-Length, never in HTTP/1.0") {
    auto framing = [](unsigned version, std::vector<Header> headers) {
      return status_of(check_framing(version, headers));
    };
    const Header host{"host", "localhost"};
    CHECK(framing(11, {host}) == 0);
    CHECK(framing(11, {host, {"content-length", "12"}}) == 0);
    CHECK(framing(11, {host, {"transfer-encoding", "chunked"}}) == 0);
    CHECK(framing(11, {host, {"transfer-encoding", "CHUNKED"}}) == 0);
    CHECK(framing(11, {host, {"transfer-encoding", " chunked\t"}}) == 0);
    for (const char* coding : {"gzip", "identity", "chunked, gzip", "gzip, chunked", "chunked, chunked", "chunked;x=1",
                               "", "chunkedx", ", chunked", "chunked,", "chunked\"", "\"chunked\""}) {
      CAPTURE(coding);
      CHECK(framing(11, {host, {"transfer-encoding", coding}}) == 400);
    }
    CHECK(framing(11, {host, {"transfer-encoding", "gzip"}, {"transfer-encoding", "chunked"}}) == 400);
    CHECK(framing(11, {host, {"transfer-encoding", "chunked"}, {"transfer-encoding", "chunked"}}) == 400);
    CHECK(framing(11, {host, {"transfer-encoding", "chunked"}, {"content-length", "5"}}) == 400);
    CHECK(framing(11, {host, {"content-length", "5"}, {"transfer-encoding", "chunked"}}) == 400);
    CHECK(framing(10, {{"transfer-encoding", "chunked"}}) == 400);
    CHECK(framing(11, {host, {"content-length", "5"}, {"content-length", "5"}}) == 400);
    CHECK(framing(11, {host, {"content-length", "5, 5"}}) == 400);
    CHECK(framing(11, {}) == 400);
    CHECK(framing(11, {host, host}) == 400);
    CHECK(framing(10, {}) == 0);  // HTTP/1.0 needs no Host
    // The message names the header and what was found, bounded however long the value.
    auto refusal = check_framing(11, std::vector<Header>{host, {"transfer-encoding", "gzip, " + std::string(5000, 'x')}});
    REQUIRE(refusal);
    CHECK(refusal->message.find("Transfer-Encoding must be exactly 'chunked'") != std::string::npos);
    CHECK(refusal->message.find("found 'gzip, xxx") != std::string::npos);
    CHECK(refusal->message.size() < 300);
  }

  TEST_CASE("head bytes: no folded header lines") {
    CHECK_FALSE(check_head_bytes("GET / HTTP/1.1\r\nHost: a\r\nX-Spaced: a  b\t c\r\n\r\n"));
    auto folded = check_head_bytes("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n");
    REQUIRE(folded);
    CHECK(folded->status == 400);
    CHECK(folded->message.find("header line 4 starts with a space or tab") != std::string::npos);
    CHECK(check_head_bytes("GET / HTTP/1.1\r\nHost: a\r\n\tb\r\n\r\n"));
    CHECK(check_head_bytes("GET / HTTP/1.1\r\n Host: a\r\n\r\n"));
  }

  TEST_CASE("Host: addresses, localhost, the bound name, this machine, the allowed list") {
    AccessRules rules;
    rules.server_address = "gpu-box.lan";
    rules.machine_name = "gpu-box";
    rules.allowed_hosts = {"chat.example.com", "api.example.com:8443"};
    auto host = [&](const char* value) { return status_of(check_host(request_with({{"host", value}}), rules)); };
    for (const char* ok : {"127.0.0.1", "127.0.0.1:23333", "10.1.2.3", "[::1]:6006", "[fe80::1]", "localhost:6006",
                           "LocalHost", "app.localhost", "gpu-box.lan:80", "GPU-BOX", "chat.example.com",
                           "chat.example.com:443", "api.example.com"}) {
      CAPTURE(ok);
      CHECK(host(ok) == 0);
    }
    for (const char* refused : {"attacker.test", "attacker.test:6006", "localhost.attacker.test", "chat.example.com.evil",
                                "127.0.0.1.nip.io", "example.com"}) {
      CAPTURE(refused);
      CHECK(host(refused) == 403);
    }
    for (const char* malformed : {"", ":80", "a b", "[::1", "[::1]x", "[not-v6]", "host:port", "host:123456", "a/b",
                                  "user@host", "ho\x01st"}) {
      CAPTURE(malformed);
      CHECK(host(malformed) == 400);
    }
    CHECK(status_of(check_host(request_with({}), rules)) == 0);  // HTTP/1.0 without Host
    rules.allowed_hosts = {"*"};
    CHECK(host("anything.test") == 0);
    rules.allowed_hosts = {};
    auto refusal = check_host(request_with({{"host", "attacker.test"}}), rules);
    REQUIRE(refusal);
    CHECK(refusal->message.find("'attacker.test'") != std::string::npos);
    CHECK(refusal->message.find("--allowed-hosts") != std::string::npos);
  }

  TEST_CASE("Origin: the server's own, or a listed one") {
    AccessRules rules;
    rules.allowed_origins = {"https://app.example.com"};
    auto origin = [&](const char* value, const char* host) {
      return status_of(check_origin(request_with({{"host", host}, {"origin", value}}), rules));
    };
    CHECK(status_of(check_origin(request_with({{"host", "localhost:6006"}}), rules)) == 0);
    CHECK(origin("http://localhost:6006", "localhost:6006") == 0);
    CHECK(origin("https://chat.example.com", "chat.example.com") == 0);  // through a TLS proxy
    CHECK(origin("https://app.example.com", "localhost:6006") == 0);
    CHECK(origin("HTTPS://APP.EXAMPLE.COM", "localhost:6006") == 0);
    CHECK(origin("http://localhost:6007", "localhost:6006") == 403);
    CHECK(origin("http://evil.test", "localhost:6006") == 403);
    CHECK(origin("null", "localhost:6006") == 403);
    CHECK(origin("localhost:6006", "localhost:6006") == 403);  // not an origin: no scheme
    CHECK(status_of(check_origin(request_with({{"origin", "http://localhost"}}), rules)) == 403);  // no Host to compare with
    rules.allowed_origins = {"*"};
    CHECK(origin("http://evil.test", "localhost:6006") == 0);
  }

  TEST_CASE("Content-Type: a POST declares one of the accepted types") {
    AccessRules rules;
    rules.body_content_types = {"application/json"};
    auto post = [&](std::vector<Header> headers, const char* method = "POST") {
      return status_of(check_content_type(request_with(std::move(headers), method), rules));
    };
    CHECK(post({{"content-type", "application/json"}}) == 0);
    CHECK(post({{"content-type", " application/JSON ; charset=utf-8"}}) == 0);
    CHECK(post({{"content-type", "text/plain"}}) == 415);
    CHECK(post({{"content-type", "text/plain; application/json"}}) == 415);
    CHECK(post({{"content-type", "multipart/form-data; boundary=x"}}) == 415);
    CHECK(post({}) == 415);
    CHECK(post({}, "GET") == 0);
    rules.body_content_types.clear();
    CHECK(post({{"content-type", "text/plain"}}) == 0);
  }

  TEST_CASE("API keys: every key compared, Bearer case-insensitive, clear 401 messages") {
    CHECK(constant_time_equals("secret-key", "secret-key"));
    CHECK_FALSE(constant_time_equals("Secret-key", "secret-key"));
    CHECK_FALSE(constant_time_equals("secret-kex", "secret-key"));
    CHECK_FALSE(constant_time_equals("secret-ke", "secret-key"));
    CHECK_FALSE(constant_time_equals("secret-keyy", "secret-key"));
    CHECK_FALSE(constant_time_equals("", "secret-key"));
    CHECK_FALSE(constant_time_equals(std::string("secret-key\0", 11), "secret-key"));
    const std::vector<std::string> keys = {"first-key", "second-key"};
    CHECK(key_matches("first-key", keys));
    CHECK(key_matches("second-key", keys));
    CHECK_FALSE(key_matches("third-key", keys));
    CHECK_FALSE(key_matches("first-keysecond-key", keys));
    CHECK_FALSE(key_matches("first-key", {}));

    auto problem = [&](std::vector<Header> headers) {
      return bearer_key_problem(request_with(std::move(headers)), keys).value_or("(accepted)");
    };
    CHECK(problem({{"authorization", "Bearer second-key"}}) == "(accepted)");
    CHECK(problem({{"authorization", "bearer   first-key"}}) == "(accepted)");
    CHECK(problem({{"authorization", "BEARER first-key"}}) == "(accepted)");
    CHECK(problem({}) == "You didn't provide an API key; send 'Authorization: Bearer KEY'");
    CHECK(problem({{"authorization", "Basic Zmlyc3Qta2V5"}}) == "The Authorization header must be 'Bearer KEY'");
    CHECK(problem({{"authorization", "Bearer"}}) == "The Authorization header must be 'Bearer KEY'");
    CHECK(problem({{"authorization", "Bearer "}}) == "The Authorization header must be 'Bearer KEY'");
    CHECK(problem({{"authorization", "Bearer wrong-key"}}) == "Incorrect API key provided");
    CHECK_FALSE(bearer_key_problem(request_with({}), {}));  // no keys: no authentication

    CHECK(validate_api_keys(keys, "api_keys").is_ok());
    Status empty = validate_api_keys(std::vector<std::string>{"a", ""}, "gradio's api_keys");
    CHECK(empty.message() == "gradio's api_keys: key 2 of 2 is empty; expected non-empty keys");
  }

  TEST_CASE("API keys: a wrong key takes as long wherever it differs") {
    // With a comparison that stops at the first difference, a key wrong in its
    // first byte is answered thousands of times sooner than one wrong in its
    // last byte (memcmp over 4 MiB takes about a millisecond); here both take
    // a full pass over the secret. The best of several runs each keeps noise out.
    const std::string secret(size_t(4) << 20, 'k');
    std::string wrong_first = secret, wrong_last = secret;
    wrong_first.front() = 'x';
    wrong_last.back() = 'x';
    auto fastest = [&](const std::string& presented) {
      auto best = std::chrono::steady_clock::duration::max();
      for (int run = 0; run < 7; ++run) {
        auto start = std::chrono::steady_clock::now();
        bool equal = constant_time_equals(presented, secret);
        best = std::min(best, std::chrono::steady_clock::now() - start);
        CHECK_FALSE(equal);
      }
      return std::chrono::duration<double>(best).count();
    };
    double first = fastest(wrong_first), last = fastest(wrong_last);
    CAPTURE(first);
    CAPTURE(last);
    CHECK(first > last / 4);
  }
}

TEST_CASE("multipart/form-data: parts as browsers send them; malformed bodies refused, naming what") {
  using hostrun::http::multipart_boundary;
  using hostrun::http::parse_multipart;
  CHECK(multipart_boundary("multipart/form-data; boundary=----WebKitFormBoundaryAbC").value() == "----WebKitFormBoundaryAbC");
  CHECK(multipart_boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\"").value() == "a b");
  CHECK_FALSE(multipart_boundary("application/json").has_value());
  CHECK_FALSE(multipart_boundary("multipart/form-data").has_value());
  CHECK_FALSE(multipart_boundary("multipart/form-data; boundary=" + std::string(71, 'x')).has_value());

  const std::string body =
      "preamble\r\n--B\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
      "\x89PNG\r\n--Bnot a delimiter\r\n--B\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--B--\r\nepilogue";
  auto parts = parse_multipart(body, "B");
  REQUIRE_MESSAGE(parts.has_value(), parts.status().message());
  REQUIRE(parts->size() == 2);
  CHECK((*parts)[0].name == "files");
  CHECK((*parts)[0].filename == "a.png");
  CHECK((*parts)[0].content_type == "image/png");
  CHECK((*parts)[0].data == "\x89PNG\r\n--Bnot a delimiter");  // CRLF--B only counts before CRLF or --
  CHECK((*parts)[1].name == "note");
  CHECK((*parts)[1].filename.empty());
  CHECK((*parts)[1].data == "hello");

  const auto refused = [](const std::string& text) {
    auto r = parse_multipart(text, "B");
    return r.has_value() ? std::string("(accepted)") : r.status().message();
  };
  CHECK(refused("--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nno end") ==
        "multipart body: a part without a closing delimiter");
  CHECK(refused("--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--") == "multipart body: a part without Content-Disposition");
  CHECK(refused("--B\r\nContent-Disposition: attachment; name=\"f\"\r\n\r\nx\r\n--B--") ==
        "multipart body: a part that is not form-data");
  CHECK(refused("--B\r\nContent-Disposition: form-data\r\n\r\nx\r\n--B--") == "multipart body: a part without a name");
  CHECK(refused("nothing here") == "multipart body: no boundary delimiter");
  std::string many;
  for (int i = 0; i < 3; ++i) many += "--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nx\r\n";
  CHECK(parse_multipart(many + "--B--", "B", 2).status().message() == "multipart body: more than 2 parts");
}

TEST_CASE("uploads: kept by path, bounded in size, forgotten after a while") {
  hostrun::gradio::UploadStore store({.max_file_bytes = 8, .max_total_bytes = 12, .keep_for = std::chrono::seconds(600)});
  auto a = store.put("abcdef", "../../etc/passwd");
  REQUIRE(a.has_value());
  CHECK(a->starts_with("/hostrun-upload/"));
  CHECK(a->ends_with("/.._.._etc_passwd"));  // the client's name, its unsafe characters replaced
  CHECK(store.get(*a).value() == std::vector<uint8_t>{'a', 'b', 'c', 'd', 'e', 'f'});
  CHECK(store.put("123456789", "big").status().code() == hostrun::ErrorCode::resource_exhausted);
  CHECK(store.put("1234567", "second").status().code() == hostrun::ErrorCode::resource_exhausted);  // 6 + 7 > 12
  CHECK_FALSE(store.get("/hostrun-upload/unknown/x").has_value());
  hostrun::gradio::UploadStore brief({.keep_for = std::chrono::seconds(0)});
  auto gone = brief.put("x", "f");
  REQUIRE(gone.has_value());
  CHECK_FALSE(brief.get(*gone).has_value());
  CHECK(brief.bytes_kept() == 0);
}
