// `hostrun serve ...`: the serving commands (the seed's `lmdeploy serve`).
//
//   hostrun serve api_server MODEL_DIR --server-name 0.0.0.0 --server-port 23333 --tp 1
//
// `serve` is a command group: add_serve_command() makes it with api_server in
// it and returns it, so the client-side commands (api_client, gradio) are
// registered on the same group from main.cpp.
#include "commands.hpp"
#include "engine_flags.hpp"
#include "run_frontend.hpp"
#include "tls_flags.hpp"

namespace hostrun::cli {

namespace {

struct ApiServerOptions {
  EngineFlags engine;
  std::string server_name = "0.0.0.0";
  int64_t server_port = 23333;
  int64_t tp = 1;
  std::vector<std::string> api_keys;
  std::vector<std::string> allowed_hosts;
  std::vector<std::string> image_url_hosts;
  std::vector<std::string> allow_origins, allow_methods, allow_headers;
  bool allow_credentials = false;
  std::string served_model_name;
  std::optional<int64_t> io_threads;
  TlsFlags tls;
};

void add_api_server(CLI::App& serve, GlobalOptions& options) {
  auto* cmd = serve.add_subcommand(
      "api_server", "Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
                    "/v1/models, /health, /metrics) until Ctrl-C");
  auto o = std::make_shared<ApiServerOptions>();
  cmd->add_option("MODEL_DIR", o->engine.model_dir,
                  "HF model folder (config.json, safetensors, tokenizer.json); none: the small model hostrun ships");
  o->engine.add_to(cmd);
  cmd->add_option("--server-name", o->server_name, "Address to listen on (0.0.0.0: every interface)")
      ->capture_default_str();
  cmd->add_option("--server-port", o->server_port, "Port to listen on (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--tp", o->tp, "Tensor parallelism: GPUs per model (only 1 for now)")->capture_default_str();
  cmd->add_option("--api-keys", o->api_keys,
                  "Bearer keys the /v1 API accepts (none: no authentication); on a shared machine prefer the "
                  "manifest's [frontend] api_keys, since others can read a command line")
      ->type_name("KEY[,KEY...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--allowed-hosts", o->allowed_hosts,
                  "Host names requests may address besides IP addresses, localhost, --server-name and this "
                  "machine's name (a proxy's public name; '*': any)")
      ->type_name("HOST[,...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--image-url-hosts", o->image_url_hosts,
                  "Hosts whose http(s) image URLs the server may fetch for image_url parts ('*': any; none: data: "
                  "URLs only); any client can make the server reach these hosts")
      ->type_name("HOST[,...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--allow-origins", o->allow_origins, "CORS: origins allowed to call the API ('*': any)")
      ->type_name("ORIGIN[,...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_flag("--allow-credentials", o->allow_credentials, "CORS: allow credentials");
  cmd->add_option("--allow-methods", o->allow_methods, "CORS: allowed methods (default '*')")->type_name("METHOD[,...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--allow-headers", o->allow_headers, "CORS: allowed headers (default '*')")->type_name("HEADER[,...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--served-model-name", o->served_model_name,
                  "Model name in /v1/models and responses (default: the model folder's name)");
  cmd->add_option("--io-threads", o->io_threads, "Threads serving HTTP (default 2)")->check(CLI::Range(1, 64));
  o->tls.add_to(cmd);
  cmd->callback([&options, o, cmd] {
    if (auto problem = empty_api_key_problem(cmd->count("--api-keys") > 0, o->api_keys)) {
      fmt::print(stderr, "hostrun serve api_server: {}\n", *problem);
      options.exit_code = 2;
      return;
    }
    if (o->tp != 1) {
      fmt::print(stderr,
                 "hostrun serve api_server: --tp {} asks for tensor parallelism over {} GPUs; this build runs a "
                 "model on one device only, so --tp must be 1\n",
                 o->tp, o->tp);
      options.exit_code = 2;
      return;
    }
    std::vector<core::ManifestOverride> frontend{
        {"frontend.plugin", "api_server", "hostrun serve api_server"},
        {"frontend.server_name", o->server_name, "--server-name"},
        {"frontend.server_port", std::to_string(o->server_port), "--server-port"},
    };
    auto strings = [&](const char* key, const std::vector<std::string>& items, const char* flag) {
      if (!items.empty()) frontend.push_back({key, comma_list(items), flag});
    };
    strings("frontend.api_keys", o->api_keys, "--api-keys");
    strings("frontend.allowed_hosts", o->allowed_hosts, "--allowed-hosts");
    strings("frontend.allow_origins", o->allow_origins, "--allow-origins");
    strings("frontend.image_url_hosts", o->image_url_hosts, "--image-url-hosts");
    strings("frontend.allow_methods", o->allow_methods, "--allow-methods");
    strings("frontend.allow_headers", o->allow_headers, "--allow-headers");
    if (o->allow_credentials) frontend.push_back({"frontend.allow_credentials", "true", "--allow-credentials"});
    if (!o->served_model_name.empty())
      frontend.push_back({"frontend.served_model_name", o->served_model_name,
                          "--served-model-name"});
    if (o->io_threads) frontend.push_back({"frontend.io_threads", std::to_string(*o->io_threads), "--io-threads"});
    o->tls.append(frontend);
    options.exit_code = run_frontend(o->engine, options.plugin_dirs, frontend);
  });
}

}  // namespace

CLI::App* add_serve_command(CLI::App& app, GlobalOptions& options) {
  auto* serve = app.add_subcommand(
      "serve", "Serve a model: api_server (OpenAI-compatible HTTP API), api_client (terminal chat against a server), "
               "gradio (web chat page + Gradio client API)");
  serve->require_subcommand(1);
  add_api_server(*serve, options);
  return serve;
}

}  // namespace hostrun::cli
