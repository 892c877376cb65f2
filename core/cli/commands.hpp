// The `hostrun` command line: each command registers itself on the app.
//
// A command is registered only when what it does is real; there are no
// placeholder commands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "plugin_loader.hpp"

namespace hostrun::cli {

// Options every command takes; commands write their exit status here.
struct GlobalOptions {
  std::vector<std::string> plugin_dirs;
  std::string log_level = "warning";
  int exit_code = 0;
};

// The `bench` group every benchmark joins; made on first use.
CLI::App* bench_group(CLI::App& app);

// Applies --log-level and scans the plugin search path.
core::PluginRegistry load_plugins(const GlobalOptions& options);

void add_plugins_command(CLI::App& app, GlobalOptions& options);
void add_manifest_command(CLI::App& app, GlobalOptions& options);
void add_chat_command(CLI::App& app, GlobalOptions& options);
void add_tokenize_command(CLI::App& app, GlobalOptions& options);
void add_bench_tokenizer_command(CLI::App& app, GlobalOptions& options);
// Makes the `serve` group (with api_server) and returns it for the client commands.
CLI::App* add_serve_command(CLI::App& app, GlobalOptions& options);
// `serve api_client URL` and `serve gradio URL|MODEL_DIR`, on the serve group.
void add_serve_client_commands(CLI::App* serve_group, GlobalOptions& options);
// `bench serving URL`, on the bench group (made here if no benchmark made it yet).
void add_bench_serving_command(CLI::App& app, GlobalOptions& options);
// `bench throughput` and `bench latency` (the local engine), on the bench group.
void add_bench_model_commands(CLI::App& app, GlobalOptions& options);
// `bench perplexity` (the local engine's teacher-forced scoring), on the bench group.
void add_bench_perplexity_command(CLI::App& app, GlobalOptions& options);
// `lite auto_awq` (offline quantization through a quantizer plugin).
void add_lite_command(CLI::App& app, GlobalOptions& options);

}  // namespace hostrun::cli
