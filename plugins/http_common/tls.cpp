// Loading a server's certificate and key with OpenSSL, each failure said in
// words: which file, which step, and OpenSSL's own reason.
#include "tls.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <cerrno>
#include <cstring>
#include <fmt/format.h>
#include <fstream>
#include <utility>

#include "tls_context.hpp"

namespace hostrun::http {

namespace {

// OpenSSL's queued errors as "library: reason; ...", emptying the queue.
std::string openssl_reasons() {
  std::string out;
  while (unsigned long code = ERR_get_error()) {
    if (!out.empty()) out += "; ";
    const char* library = ERR_lib_error_string(code);
    const char* reason = ERR_reason_error_string(code);
    out += fmt::format("{}: {}", library ? library : "OpenSSL", reason ? reason : "unknown error");
  }
  return out.empty() ? "no reason given" : out;
}

// A file OpenSSL cannot open reports "system lib"; saying ENOENT or EACCES
// about the named file is what the operator can act on.
Status check_readable(const std::string& path, std::string_view what) {
  std::ifstream file(path, std::ios::binary);
  if (!file)
    return Status(ErrorCode::not_found, fmt::format("the TLS {} '{}' cannot be read: {}", what, path,
                                                    std::strerror(errno)));
  return Status();
}

// Called by OpenSSL when the key is encrypted: there is nobody to type a
// passphrase into a server (OpenSSL's default would read the terminal), so
// the key is refused and the refusal says why.
int refuse_passphrase(char*, int, int, void* asked) {
  *static_cast<bool*>(asked) = true;
  return 0;
}

// TLS 1.2 and newer with OpenSSL's default ciphers. No session tickets: their
// key would live as long as the process, weakening forward secrecy, and a
// keep-alive connection already spares most handshakes. No renegotiation: it
// would let one client make the server repeat the costly half of a handshake.
Status configure(SSL_CTX* context) {
  if (SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION) != 1)
    return Status(ErrorCode::internal, "OpenSSL refused TLS 1.2 as the lowest version: " + openssl_reasons());
  SSL_CTX_set_options(context, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_num_tickets(context, 0);
  return Status();
}

Status load_certificate_chain(SSL_CTX* context, const std::string& path) {
  if (Status readable = check_readable(path, "certificate file"); !readable) return readable;
  if (SSL_CTX_use_certificate_chain_file(context, path.c_str()) != 1)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the TLS certificate file '{}' holds no usable PEM certificate chain ({})", path,
                              openssl_reasons()));
  return Status();
}

// Read apart from the context so that "not a key" and "not this certificate's
// key" are told apart (SSL_CTX_use_PrivateKey_file says only the latter's reason).
Result<std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>> read_private_key(const std::string& path) {
  using Key = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
  if (Status readable = check_readable(path, "key file"); !readable) return readable;
  std::unique_ptr<BIO, decltype(&BIO_free)> file(BIO_new_file(path.c_str(), "r"), BIO_free);
  if (!file)
    return Status(ErrorCode::io_error, fmt::format("the TLS key file '{}' cannot be opened ({})", path, openssl_reasons()));
  bool asked_for_passphrase = false;
  Key key(PEM_read_bio_PrivateKey(file.get(), nullptr, refuse_passphrase, &asked_for_passphrase), EVP_PKEY_free);
  if (key) return key;
  if (asked_for_passphrase) {
    ERR_clear_error();
    return Status(ErrorCode::unsupported,
                  fmt::format("the TLS key file '{}' is encrypted with a passphrase, which a server cannot be asked "
                              "for; write an unencrypted copy only the server's user can read "
                              "(openssl pkey -in {} -out server.key && chmod 600 server.key)",
                              path, path));
  }
  return Status(ErrorCode::invalid_argument,
                fmt::format("the TLS key file '{}' holds no usable PEM private key ({})", path, openssl_reasons()));
}

Status load_private_key(SSL_CTX* context, const TlsFiles& files) {
  auto key = read_private_key(files.private_key);
  if (!key) return key.status();
  if (X509_check_private_key(SSL_CTX_get0_certificate(context), key->get()) != 1) {
    ERR_clear_error();
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the TLS key file '{}' is not the key of the certificate in '{}' (a key from another "
                              "certificate?)", files.private_key, files.certificate_chain));
  }
  if (SSL_CTX_use_PrivateKey(context, key->get()) != 1)
    return Status(ErrorCode::invalid_argument, fmt::format("OpenSSL refused the TLS key in '{}' ({})",
                                                           files.private_key, openssl_reasons()));
  return Status();
}

}  // namespace

Result<std::shared_ptr<TlsContext>> load_tls(const TlsFiles& files) {
  auto tls = std::make_shared<TlsContext>();
  SSL_CTX* context = tls->ssl.native_handle();
  ERR_clear_error();
  if (Status s = configure(context); !s) return s;
  if (Status s = load_certificate_chain(context, files.certificate_chain); !s) return s;
  if (Status s = load_private_key(context, files); !s) return s;
  return tls;
}

Result<std::shared_ptr<TlsContext>> tls_from_settings(std::string_view certfile, std::string_view keyfile,
                                                      std::string_view frontend) {
  if (certfile.empty() && keyfile.empty()) return std::shared_ptr<TlsContext>();
  if (certfile.empty() || keyfile.empty()) {
    auto [given, missing] = certfile.empty() ? std::pair("ssl_keyfile (--ssl-keyfile)", "ssl_certfile (--ssl-certfile)")
                                             : std::pair("ssl_certfile (--ssl-certfile)", "ssl_keyfile (--ssl-keyfile)");
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{}: {} is set but {} is not; TLS needs both the certificate and its key", frontend,
                              given, missing));
  }
  auto loaded = load_tls({std::string(certfile), std::string(keyfile)});
  if (!loaded) return Status(loaded.status().code(), fmt::format("{}: {}", frontend, loaded.status().message()));
  return loaded;
}

}  // namespace hostrun::http
