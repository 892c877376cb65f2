// http::Server over TLS (plugins/http_common/tls.hpp), without a model: a
// certificate authority and a server certificate made here with OpenSSL's
// API, a blocking OpenSSL client on a raw socket. What a TLS connection must
// do as a plain one does (pipelining, 100-continue, streams, hang-ups while
// an answer is pending, including a close_notify with the socket left open),
// and what only TLS has: plain HTTP to the TLS port, a TLS hello to a plain
// port, a client that never handshakes, TLS 1.1, the certificate and key
// errors at load time.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "http_server.hpp"
#include "tls.hpp"

using namespace hostrun;
namespace fs = std::filesystem;

namespace {

using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using Certificate = std::unique_ptr<X509, decltype(&X509_free)>;

Key new_key() { return Key(EVP_EC_gen("P-256"), EVP_PKEY_free); }

void add_extension(X509* certificate, X509V3_CTX* context, int nid, const char* value) {
  X509_EXTENSION* extension = X509V3_EXT_conf_nid(nullptr, context, nid, value);
  REQUIRE(extension != nullptr);
  X509_add_ext(certificate, extension, -1);
  X509_EXTENSION_free(extension);
}

// A certificate for `key` named `common_name`, signed by `issuer` (itself when null), valid for an hour.
Certificate new_certificate(EVP_PKEY* key, const char* common_name, X509* issuer, EVP_PKEY* issuer_key,
                            const char* subject_alt_name) {
  static long serial = 1;
  Certificate certificate(X509_new(), X509_free);
  X509* c = certificate.get();
  X509_set_version(c, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(c), serial++);
  X509_gmtime_adj(X509_getm_notBefore(c), -60);
  X509_gmtime_adj(X509_getm_notAfter(c), 3600);
  X509_set_pubkey(c, key);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(c), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
  X509_set_issuer_name(c, X509_get_subject_name(issuer ? issuer : c));
  X509V3_CTX context;
  X509V3_set_ctx_nodb(&context);
  X509V3_set_ctx(&context, issuer ? issuer : c, c, nullptr, nullptr, 0);
  if (subject_alt_name) {
    add_extension(c, &context, NID_basic_constraints, "CA:FALSE");
    add_extension(c, &context, NID_subject_alt_name, subject_alt_name);
  } else {
    add_extension(c, &context, NID_basic_constraints, "critical,CA:TRUE");
    add_extension(c, &context, NID_key_usage, "critical,keyCertSign,cRLSign");
  }
  REQUIRE(X509_sign(c, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
  return certificate;
}

void write_pem(const fs::path& path, const std::function<int(FILE*)>& write) {
  FILE* file = std::fopen(path.c_str(), "w");
  REQUIRE(file != nullptr);
  REQUIRE(write(file) == 1);
  std::fclose(file);
}

// A test CA, a server certificate for localhost and 127.0.0.1 signed by it,
// and the wrong files a careless operator might pass. Removed at the end.
struct Certificates {
  fs::path dir;
  fs::path ca, chain, key, other_key, encrypted_key, not_pem;

  Certificates() {
    char pattern[] = "/tmp/hostrun-tls-XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    dir = pattern;
    ca = dir / "ca.pem", chain = dir / "server.pem", key = dir / "server.key";
    other_key = dir / "other.key", encrypted_key = dir / "encrypted.key", not_pem = dir / "notes.txt";
    Key ca_key = new_key(), server_key = new_key(), unrelated = new_key();
    Certificate ca_certificate = new_certificate(ca_key.get(), "hostrun test CA", nullptr, nullptr, nullptr);
    Certificate server = new_certificate(server_key.get(), "localhost", ca_certificate.get(), ca_key.get(),
                                         "DNS:localhost,IP:127.0.0.1");
    write_pem(ca, [&](FILE* f) { return PEM_write_X509(f, ca_certificate.get()); });
    write_pem(chain, [&](FILE* f) { return PEM_write_X509(f, server.get()); });
    write_pem(key, [&](FILE* f) { return PEM_write_PrivateKey(f, server_key.get(), nullptr, nullptr, 0, nullptr, nullptr); });
    write_pem(other_key, [&](FILE* f) { return PEM_write_PrivateKey(f, unrelated.get(), nullptr, nullptr, 0, nullptr, nullptr); });
    char passphrase[] = "secret";
    write_pem(encrypted_key, [&](FILE* f) {
      return PEM_write_PrivateKey(f, server_key.get(), EVP_aes_256_cbc(), nullptr, 0, nullptr, passphrase);
    });
    std::ofstream(not_pem) << "not a certificate\n";
  }
  ~Certificates() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

const Certificates& certificates() {
  static Certificates made;
  return made;
}

std::shared_ptr<http::TlsContext> server_tls() {
  auto tls = http::load_tls({certificates().chain, certificates().key});
  REQUIRE(tls.has_value());
  return *tls;
}

int connect_loopback(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval timeout{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  return fd;
}

// Everything a plain client reads until the server closes (or 5 s pass).
std::string read_plain_to_close(int fd, bool* closed) {
  std::string got;
  char buffer[4096];
  for (;;) {
    ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n == 0) *closed = true;
    if (n <= 0) return got;
    got.append(buffer, size_t(n));
  }
}

// A blocking OpenSSL client that trusts the test CA only and checks the host name.
struct TlsClient {
  int fd = -1;
  SSL_CTX* context = nullptr;
  SSL* ssl = nullptr;
  bool clean_close = false;  // the server's close_notify arrived
  bool cut = false;          // the connection ended without one, or failed

  explicit TlsClient(uint16_t port, int max_version = 0) {
    fd = connect_loopback(port);
    context = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(context, certificates().ca.c_str(), nullptr);
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nullptr);
    if (max_version) {
      // Lowest security level, so that it is the server, not this client, that refuses the old version.
      SSL_CTX_set_security_level(context, 0);
      SSL_CTX_set_min_proto_version(context, TLS1_VERSION);
      SSL_CTX_set_max_proto_version(context, max_version);
    }
    ssl = SSL_new(context);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
  }
  ~TlsClient() {
    if (ssl) SSL_free(ssl);
    if (context) SSL_CTX_free(context);
    if (fd >= 0) close(fd);
  }
  bool handshake() { return SSL_connect(ssl) == 1; }
  void send_text(const std::string& text) { REQUIRE(SSL_write(ssl, text.data(), int(text.size())) == int(text.size())); }
  // Reads until `needle` has arrived `count` times, the stream ends, or 5 s pass.
  std::string read_until(const std::string& needle, int count = 1) {
    std::string got;
    char buffer[4096];
    for (;;) {
      int seen = 0;
      for (size_t at = got.find(needle); at != std::string::npos; at = got.find(needle, at + 1)) ++seen;
      if (seen >= count) return got;
      int n = SSL_read(ssl, buffer, sizeof buffer);
      if (n <= 0) {
        int error = SSL_get_error(ssl, n);
        clean_close = error == SSL_ERROR_ZERO_RETURN;
        cut = !clean_close;
        ERR_clear_error();
        return got;
      }
      got.append(buffer, size_t(n));
    }
  }
  std::string read_to_close() { return read_until("\x01never sent\x01"); }
  // Sends close_notify and leaves the socket open: the hang-up is only in the TLS layer.
  void close_notify() { SSL_shutdown(ssl); }
};

struct TlsServer {
  http::Server server;
  std::atomic<int> aborted{0};
  std::shared_ptr<http::Exchange> parked;
  std::mutex mutex;

  explicit TlsServer(http::ServerOptions options = tls_options()) : server(std::move(options)) {
    server.route("POST", "/echo", [](std::shared_ptr<http::Exchange> e) {
      http::Response r;
      r.content_type = "text/plain";
      r.body = e->request().body;
      e->respond(std::move(r));
    });
    server.route("GET", "/stream", [](std::shared_ptr<http::Exchange> e) {
      e->begin_stream(200, "text/event-stream");
      std::thread([e] {
        for (int i = 0; i < 3; ++i) e->write(http::sse_event("piece " + std::to_string(i)));
        e->finish();
      }).detach();
    });
    server.route("GET", "/park", [this](std::shared_ptr<http::Exchange> e) {
      e->on_abort([this] { ++aborted; });
      std::lock_guard lock(mutex);
      parked = e;
    });
    REQUIRE(server.start().is_ok());
  }
  static http::ServerOptions tls_options() {
    http::ServerOptions o;
    o.address = "127.0.0.1";
    o.threads = 2;
    o.max_body_bytes = 1024;
    o.tls = server_tls();
    return o;
  }
  bool wait_parked() {
    return eventually([&] {
      std::lock_guard lock(mutex);
      return parked != nullptr;
    });
  }
  static bool eventually(const std::function<bool()>& condition) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!condition()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }
};

const std::string kEcho = "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n";

}  // namespace

TEST_SUITE("http_server over TLS") {
  TEST_CASE("the certificate and key are checked when loaded, each failure naming the file and the reason") {
    const Certificates& c = certificates();
    CHECK(http::load_tls({c.chain, c.key}).has_value());
    auto message = [](http::TlsFiles files) { return http::load_tls(files).status().message(); };
    std::string missing = message({(c.dir / "absent.pem").string(), c.key});
    CHECK(missing.find("absent.pem' cannot be read: No such file or directory") != std::string::npos);
    std::string not_pem = message({c.not_pem, c.key});
    CHECK(not_pem.find("notes.txt' holds no usable PEM certificate chain (PEM routines: no start line") !=
          std::string::npos);
    std::string not_key = message({c.chain, c.chain});
    CHECK(not_key.find("server.pem' holds no usable PEM private key") != std::string::npos);
    std::string mismatch = message({c.chain, c.other_key});
    CHECK(mismatch.find("other.key' is not the key of the certificate in '" + c.chain.string() + "'") !=
          std::string::npos);
    std::string encrypted = message({c.chain, c.encrypted_key});
    CHECK(encrypted.find("encrypted.key' is encrypted with a passphrase") != std::string::npos);

    auto none = http::tls_from_settings("", "", "api_server");
    REQUIRE(none.has_value());
    CHECK(*none == nullptr);
    std::string half = http::tls_from_settings(c.chain.string(), "", "api_server").status().message();
    CHECK(half == "api_server: ssl_certfile (--ssl-certfile) is set but ssl_keyfile (--ssl-keyfile) is not; TLS "
                  "needs both the certificate and its key");
    half = http::tls_from_settings("", c.key.string(), "gradio").status().message();
    CHECK(half.starts_with("gradio: ssl_keyfile (--ssl-keyfile) is set but ssl_certfile (--ssl-certfile) is not"));
    CHECK(http::tls_from_settings(c.chain.string(), c.other_key.string(), "gradio").status().message().starts_with(
        "gradio: the TLS key file"));
  }

  TEST_CASE("over TLS: pipelining, 100-continue, a chunked stream, keep-alive, HTTP/1.0 ends with close_notify") {
    TlsServer t;
    {
      TlsClient c(t.server.port());
      REQUIRE(c.handshake());
      c.send_text(kEcho + "Content-Length: 3\r\n\r\none" + kEcho + "Content-Length: 3\r\n\r\ntwo");
      std::string got = c.read_until("two");
      CHECK(got.find("HTTP/1.1 200") < got.find("one"));
      CHECK(got.find("one") < got.find("HTTP/1.1 200", got.find("one")));
      c.send_text(kEcho + "Expect: 100-continue\r\nContent-Length: 5\r\n\r\n");
      CHECK(c.read_until("\r\n\r\n").starts_with("HTTP/1.1 100 Continue"));
      c.send_text("hello");
      CHECK(c.read_until("hello").find("200 OK") != std::string::npos);
      c.send_text("GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n");
      got = c.read_until("0\r\n\r\n");
      CHECK(got.find("Transfer-Encoding: chunked") != std::string::npos);
      CHECK(got.find("data: piece 0\n\n") < got.find("data: piece 2\n\n"));
      c.send_text("GARBAGE\r\n\r\n");
      CHECK(c.read_until("}}").starts_with("HTTP/1.1 400"));
    }
    {
      // A body that ends with the connection: the client must see TLS end cleanly, not a cut.
      TlsClient c(t.server.port());
      REQUIRE(c.handshake());
      c.send_text("GET /stream HTTP/1.0\r\n\r\n");
      std::string got = c.read_to_close();
      CHECK(got.find("data: piece 2\n\n") != std::string::npos);
      CHECK(c.clean_close);
    }
    CHECK(TlsServer::eventually([&] { return t.server.stats().connections_open == 0; }));
  }

  TEST_CASE("plain HTTP to the TLS port is answered 400 in plain HTTP and closed; TLS still works") {
    TlsServer t;
    int fd = connect_loopback(t.server.port());
    std::string request = "GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n";
    REQUIRE(send(fd, request.data(), request.size(), MSG_NOSIGNAL) == ssize_t(request.size()));
    bool closed = false;
    std::string got = read_plain_to_close(fd, &closed);
    close(fd);
    CHECK(got.starts_with("HTTP/1.1 400 Bad Request"));
    CHECK(got.find("Connection: close") != std::string::npos);
    CHECK(got.find("this port speaks HTTPS: use an https:// URL") != std::string::npos);
    CHECK(closed);
    TlsClient c(t.server.port());
    REQUIRE(c.handshake());
    c.send_text(kEcho + "Content-Length: 2\r\n\r\nok");
    CHECK(c.read_until("\r\n\r\nok").starts_with("HTTP/1.1 200"));
  }

  TEST_CASE("a TLS hello to a plain port is refused at once, not left waiting for a head") {
    http::ServerOptions options = TlsServer::tls_options();
    options.tls = nullptr;
    http::Server plain(options);
    REQUIRE(plain.start().is_ok());
    auto started = std::chrono::steady_clock::now();
    TlsClient c(plain.port());
    CHECK_FALSE(c.handshake());
    // The client's receive timeout is 5 s; an answer, not the timeout, ended the handshake.
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(2));
    CHECK(TlsServer::eventually([&] { return plain.stats().connections_open == 0; }));
  }

  TEST_CASE("a client that never handshakes holds no thread and is closed at the idle timeout") {
    http::ServerOptions options = TlsServer::tls_options();
    options.threads = 1;  // a client that blocked the thread would block everyone
    options.idle_timeout = std::chrono::seconds(1);
    TlsServer t(options);
    int silent = connect_loopback(t.server.port());
    {
      TlsClient c(t.server.port());
      REQUIRE(c.handshake());
      c.send_text(kEcho + "Content-Length: 2\r\n\r\nok");
      CHECK(c.read_until("\r\n\r\nok").starts_with("HTTP/1.1 200"));
    }
    bool closed = false;
    auto started = std::chrono::steady_clock::now();
    CHECK(read_plain_to_close(silent, &closed).empty());
    CHECK(closed);
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(3));
    close(silent);
    CHECK(TlsServer::eventually([&] { return t.server.stats().connections_open == 0; }));
  }

  TEST_CASE("TLS 1.1 is refused") {
    TlsServer t;
    TlsClient c(t.server.port(), TLS1_1_VERSION);
    CHECK_FALSE(c.handshake());
    TlsClient modern(t.server.port());
    CHECK(modern.handshake());
  }

  TEST_CASE("a TLS client that hangs up while its answer is pending aborts the exchange") {
    SUBCASE("with a close_notify, the socket left open") {
      TlsServer t;
      TlsClient c(t.server.port());
      REQUIRE(c.handshake());
      c.send_text("GET /park HTTP/1.1\r\nHost: localhost\r\n\r\n");
      REQUIRE(t.wait_parked());
      c.close_notify();
      CHECK(TlsServer::eventually([&] { return t.aborted.load() == 1; }));
      CHECK(t.parked->aborted());
    }
    SUBCASE("by closing the socket, no close_notify") {
      TlsServer t;
      {
        TlsClient c(t.server.port());
        REQUIRE(c.handshake());
        c.send_text("GET /park HTTP/1.1\r\nHost: localhost\r\n\r\n");
        REQUIRE(t.wait_parked());
        close(c.fd);
        c.fd = -1;
      }
      CHECK(TlsServer::eventually([&] { return t.aborted.load() == 1; }));
    }
  }

  TEST_CASE("under TLS, a request sent while an answer is pending is answered after it") {
    TlsServer t;
    TlsClient c(t.server.port());
    REQUIRE(c.handshake());
    c.send_text("GET /park HTTP/1.1\r\nHost: localhost\r\n\r\n");
    REQUIRE(t.wait_parked());
    c.send_text(kEcho + "Content-Length: 6\r\n\r\nsecond");
    // Long enough for the server to have decrypted it while the first answer was pending.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(t.aborted.load() == 0);
    http::Response first;
    first.content_type = "text/plain";
    first.body = "first";
    t.parked->respond(first);
    std::string got = c.read_until("second");
    CHECK(got.find("first") < got.find("second"));
    CHECK(got.find("HTTP/1.1 200", got.find("first")) != std::string::npos);
  }
}
