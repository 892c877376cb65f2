// --ssl-certfile / --ssl-keyfile of the commands that serve HTTP (serve
// api_server, serve gradio): the frontend's ssl_certfile / ssl_keyfile, which
// the frontend reads and checks when it is made (plugins/http_common/tls.hpp).
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "runtime.hpp"

namespace hostrun::cli {

struct TlsFlags {
  std::string certfile, keyfile;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--ssl-certfile", certfile,
                    "Serve HTTPS with this PEM certificate chain (the server's certificate first); needs "
                    "--ssl-keyfile")
        ->type_name("FILE");
    cmd->add_option("--ssl-keyfile", keyfile, "The certificate's PEM private key (unencrypted); needs --ssl-certfile")
        ->type_name("FILE");
  }

  // One without the other reaches the frontend too, which refuses it naming both.
  void append(std::vector<core::ManifestOverride>& out) const {
    if (!certfile.empty()) out.push_back({"frontend.ssl_certfile", certfile, "--ssl-certfile"});
    if (!keyfile.empty()) out.push_back({"frontend.ssl_keyfile", keyfile, "--ssl-keyfile"});
  }
};

}  // namespace hostrun::cli
