// What http_server.cpp needs of a TlsContext (tls.hpp): the Asio SSL context
// every connection's stream is made with. Internal to http_common.
#pragma once

#include <boost/asio/ssl/context.hpp>

#include "tls.hpp"

namespace hostrun::http {

class TlsContext {
 public:
  TlsContext() : ssl(boost::asio::ssl::context::tls_server) {}
  boost::asio::ssl::context ssl;
};

}  // namespace hostrun::http
