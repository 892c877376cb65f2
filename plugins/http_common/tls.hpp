// TLS for the HTTP server: a certificate chain and its private key, loaded
// once when a frontend is made, so that a file that cannot be read, does not
// parse or does not match is reported before the model loads, naming the
// file and OpenSSL's reason. The header has no Boost or OpenSSL in it;
// tls_context.hpp (internal) holds what the server needs.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <hostrun/status.hpp>

namespace hostrun::http {

// OpenSSL's server context: TLS 1.2 and newer, OpenSSL's default ciphers, no
// session tickets, no renegotiation. Shared by every connection of a server.
class TlsContext;

struct TlsFiles {
  std::string certificate_chain;  // PEM: the server's certificate first, then any intermediates
  std::string private_key;        // PEM, unencrypted (the server starts unattended; nobody types a passphrase)
};

// Loads and cross-checks both files. Errors name the file and say why.
Result<std::shared_ptr<TlsContext>> load_tls(const TlsFiles& files);

// The frontends' `ssl_certfile` / `ssl_keyfile` settings: both empty is plain
// HTTP (null), both set is load_tls(), one without the other is refused.
// `frontend` names the plugin in messages ("api_server").
Result<std::shared_ptr<TlsContext>> tls_from_settings(std::string_view certfile, std::string_view keyfile,
                                                      std::string_view frontend);

}  // namespace hostrun::http
