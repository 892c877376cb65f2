// The client side of `hostrun serve` (the seed's section 4.2 and 4.3):
//
//   hostrun serve api_client http://localhost:23333 [--api-key KEY]
//   hostrun serve api_client MODEL_DIR [engine flags]
//   hostrun serve gradio http://localhost:23333 --server-name 0.0.0.0 --server-port 6006 [--api-keys K]
//   hostrun serve gradio MODEL_DIR --server-port 6006 [engine flags]
//
// api_client is the terminal "chat" frontend over a core::RemoteEngine, so it
// behaves exactly like `hostrun chat` (Enter twice sends, `end`, `exit`).
// gradio runs the "gradio" frontend over a RemoteEngine when given a URL and
// over the local engine when given a model folder. With a URL, a --manifest
// may hold a [frontend] table only (the server's own settings apply to the
// engine), and --set may set frontend.KEY only.
#include "commands.hpp"
#include "engine_flags.hpp"
#include "remote_engine.hpp"
#include "run_frontend.hpp"
#include "tls_flags.hpp"

namespace hostrun::cli {

namespace {

// The chat controls of `hostrun chat`, as frontend settings.
struct SamplingFlags {
  std::optional<double> temperature, top_p, repetition_penalty;
  std::optional<int64_t> top_k, max_new_tokens, seed;
  std::string system;

  void add_to(CLI::App* cmd, bool with_seed) {
    cmd->add_option("--temperature", temperature, "Sampling temperature (default 0.8; 0: greedy)");
    cmd->add_option("--top-p", top_p, "Nucleus sampling (default 0.8)");
    cmd->add_option("--top-k", top_k, "Top-k sampling (default 40; 0: off)");
    cmd->add_option("--repetition-penalty", repetition_penalty, "Repetition penalty (default 1.0)");
    cmd->add_option("--max-new-tokens", max_new_tokens, "Most tokens in one reply (default 512)");
    if (with_seed) cmd->add_option("--seed", seed, "Sampling seed (default: a new one each reply)");
    cmd->add_option("--system", system, "System prompt");
  }

  void append(std::vector<core::ManifestOverride>& out) const {
    auto add = [&](const char* key, const auto& value, const char* flag) {
      if (value) out.push_back({key, fmt::format("{}", *value), flag});
    };
    add("frontend.temperature", temperature, "--temperature");
    add("frontend.top_p", top_p, "--top-p");
    add("frontend.top_k", top_k, "--top-k");
    add("frontend.repetition_penalty", repetition_penalty, "--repetition-penalty");
    add("frontend.max_new_tokens", max_new_tokens, "--max-new-tokens");
    add("frontend.seed", seed, "--seed");
    if (!system.empty()) out.push_back({"frontend.system", system, "--system"});
  }
};

struct RemoteFlags {
  std::string api_key;
  std::string model;
  std::string ca_file;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--api-key", api_key, "Bearer key the server expects (its --api-keys)");
    cmd->add_option("--model", model, "Which of the server's models to use (default: the first /v1/models lists)");
    cmd->add_option("--ssl-ca-file", ca_file,
                    "For an https:// URL: PEM certificate(s) of a CA to trust besides the system's (a private CA)")
        ->type_name("FILE");
  }

  bool any() const { return !api_key.empty() || !model.empty() || !ca_file.empty(); }

  EngineOpener opener(std::string url) const {
    return [url, key = api_key, model = model, ca_file = ca_file]() -> Result<std::unique_ptr<EngineHandle>> {
      core::RemoteEngineOptions options;
      options.url = url;
      options.api_key = key;
      options.model = model;
      options.ca_file = ca_file;
      auto engine = core::RemoteEngine::open(std::move(options));
      if (!engine) return engine.status();
      return std::unique_ptr<EngineHandle>(std::move(*engine));
    };
  }
};

struct ApiClientOptions {
  std::string target;
  EngineFlags engine;
  RemoteFlags remote;
  SamplingFlags sampling;
};

struct GradioOptions {
  std::string target;
  EngineFlags engine;
  RemoteFlags remote;
  SamplingFlags sampling;
  std::string server_name = "0.0.0.0";
  int64_t server_port = 6006;
  std::string title;
  std::vector<std::string> api_keys, allowed_hosts;
  TlsFlags tls;
};

bool is_loopback(std::string_view address) {
  return address == "localhost" || address == "::1" || address.starts_with("127.");
}

// Runs `frontend` over the server at `target` (a URL) or over a local engine
// on the model folder `target`, refusing flags that do not apply to the choice.
int run_over_target(const char* command, const std::string& target, const CLI::App* cmd, EngineFlags& engine,
                    const RemoteFlags& remote, const std::vector<core::ManifestOverride>& frontend,
                    const GlobalOptions& options) {
  // Anything with a scheme is meant as a server (ftp:// is then refused by name), not a folder.
  if (core::looks_like_url(target) || target.find("://") != std::string::npos) {
    // Engine flags configure a local engine; with a URL they would be silently ignored.
    for (const char* flag : {"--chat-template", "--device", "--session-len", "--max-batch-size",
                             "--max-prefill-token-num", "--cache-max-entry-count", "--cache-block-seq-len",
                             "--num-kv-blocks", "--enable-prefix-caching", "--quant-policy", "--model-format",
                             "--max-queued-requests", "--request-timeout"}) {
      if (cmd->count(flag) > 0) {
        fmt::print(stderr, "hostrun {}: {} configures a local engine; with a URL ({}) the server's own settings "
                           "apply, so leave it out\n", command, flag, target);
        return 2;
      }
    }
    std::vector<core::ManifestOverride> settings = frontend;
    for (const auto& assignment : engine.sets) {
      size_t eq = assignment.find('=');
      if (!assignment.starts_with("frontend.") || eq == std::string::npos) {
        fmt::print(stderr, "hostrun {}: --set '{}': with a URL ({}) only frontend settings apply; expected "
                           "frontend.KEY=VALUE\n", command, assignment, target);
        return 2;
      }
      settings.push_back({assignment.substr(0, eq), assignment.substr(eq + 1), "--set " + assignment});
    }
    auto url = core::parse_server_url(target);
    if (!url) {
      fmt::print(stderr, "hostrun {}: {}\n", command, url.status().message());
      return 2;
    }
    return run_frontend(options.plugin_dirs, settings, remote.opener(target), engine.manifest);
  }
  if (remote.any()) {
    fmt::print(stderr, "hostrun {}: --api-key, --model and --ssl-ca-file are for a server URL; '{}' is not one "
                       "(expected http:// or https://)\n", command, target);
    return 2;
  }
  engine.model_dir = target;
  return run_frontend(engine, options.plugin_dirs, frontend);
}

void add_api_client(CLI::App& serve, GlobalOptions& options) {
  auto* cmd = serve.add_subcommand(
      "api_client", "Chat in the terminal with an OpenAI-compatible server (hostrun, vLLM, LMDeploy), streaming; "
                    "Enter twice sends, 'end' resets the conversation, 'exit' quits. Reads a pipe too.");
  auto o = std::make_shared<ApiClientOptions>();
  cmd->add_option("URL|MODEL_DIR", o->target,
                  "http(s)://... of an OpenAI-compatible server (a trailing /v1 is fine), or an HF model folder "
                  "to chat with a local engine (none: the small model hostrun ships)");
  o->remote.add_to(cmd);
  o->sampling.add_to(cmd, true);
  o->engine.add_to(cmd);
  cmd->callback([&options, o, cmd] {
    std::vector<core::ManifestOverride> frontend{{"frontend.plugin", "chat", "hostrun serve api_client"}};
    o->sampling.append(frontend);
    options.exit_code = run_over_target("serve api_client", o->target, cmd, o->engine, o->remote, frontend, options);
  });
}

void add_gradio(CLI::App& serve, GlobalOptions& options) {
  auto* cmd = serve.add_subcommand(
      "gradio", "Serve a web chat page (streaming, history, sampling controls, stop and reset) that also answers "
                "Gradio's client API; its engine is a server URL or a local model folder");
  auto o = std::make_shared<GradioOptions>();
  cmd->add_option("URL|MODEL_DIR", o->target,
                  "http(s)://... of an OpenAI-compatible server, or an HF model folder (none: the small model "
                  "hostrun ships)");
  cmd->add_option("--server-name", o->server_name, "Address to listen on (0.0.0.0: every interface)")
      ->capture_default_str();
  cmd->add_option("--server-port", o->server_port, "Port to listen on (0: any free port, printed at start)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--title", o->title, "Title of the page (default 'hostrun chat')");
  cmd->add_option("--api-keys", o->api_keys,
                  "Bearer keys this server's page API and Gradio API accept (none: no authentication); on a shared "
                  "machine prefer api_keys in a --manifest [frontend] table, since others can read a command line")
      ->type_name("KEY[,KEY...]")->allow_extra_args(false)->delimiter(',');
  cmd->add_option("--allowed-hosts", o->allowed_hosts,
                  "Host names requests may address besides IP addresses, localhost, --server-name and this "
                  "machine's name (a proxy's public name; '*': any)")
      ->type_name("HOST[,...]")->allow_extra_args(false)->delimiter(',');
  o->tls.add_to(cmd);
  o->remote.add_to(cmd);
  o->sampling.add_to(cmd, false);
  o->engine.add_to(cmd);
  cmd->callback([&options, o, cmd] {
    if (auto problem = empty_api_key_problem(cmd->count("--api-keys") > 0, o->api_keys)) {
      fmt::print(stderr, "hostrun serve gradio: {}\n", *problem);
      options.exit_code = 2;
      return;
    }
    std::vector<core::ManifestOverride> frontend{
        {"frontend.plugin", "gradio", "hostrun serve gradio"},
        {"frontend.server_name", o->server_name, "--server-name"},
        {"frontend.server_port", std::to_string(o->server_port), "--server-port"},
    };
    if (!o->title.empty()) frontend.push_back({"frontend.title", o->title, "--title"});
    if (!o->api_keys.empty()) frontend.push_back({"frontend.api_keys", comma_list(o->api_keys), "--api-keys"});
    if (!o->allowed_hosts.empty())
      frontend.push_back({"frontend.allowed_hosts", comma_list(o->allowed_hosts), "--allowed-hosts"});
    o->tls.append(frontend);
    o->sampling.append(frontend);
    // The bridge calls the server with its key for whoever reaches the bridge.
    bool own_keys_possible = !o->api_keys.empty() || !o->engine.manifest.empty() || !o->engine.sets.empty();
    if (!o->remote.api_key.empty() && !own_keys_possible && !is_loopback(o->server_name))
      fmt::print(stderr, "hostrun serve gradio: warning: anyone who reaches {}:{} uses {} with your --api-key; give "
                         "this server keys of its own (--api-keys, or api_keys in a --manifest [frontend] table)\n",
                 o->server_name, o->server_port, o->target);
    options.exit_code = run_over_target("serve gradio", o->target, cmd, o->engine, o->remote, frontend, options);
  });
}

}  // namespace

void add_serve_client_commands(CLI::App* serve_group, GlobalOptions& options) {
  add_api_client(*serve_group, options);
  add_gradio(*serve_group, options);
}

}  // namespace hostrun::cli
