#include <cstdio>

#include "commands.hpp"
#include "log.hpp"

namespace hostrun::cli {

core::PluginRegistry load_plugins(const GlobalOptions& options) {
  std::vector<std::filesystem::path> dirs(options.plugin_dirs.begin(), options.plugin_dirs.end());
  core::PluginRegistry registry;
  registry.scan(core::plugin_search_path(dirs));
  return registry;
}

CLI::App* bench_group(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands({}))
    if (sub->get_name() == "bench") return sub;
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (numbers for docs/benchmarks.md)");
  bench->require_subcommand(1);
  return bench;
}

}  // namespace hostrun::cli

int main(int argc, char** argv) {
  using namespace hostrun;
  CLI::App app{"hostrun: deploy large language models on NVIDIA GPUs, with plugins for models, quantizers,\n"
               "KV-cache formats, tokenizers and frontends.",
               "hostrun"};
  app.set_version_flag("--version", std::string("hostrun " HOSTRUN_SDK_VERSION_STRING " (plugin ABI ") +
                                        std::to_string(HOSTRUN_ABI_VERSION) + ")");
  app.require_subcommand(1);
  app.fallthrough();  // global options may follow the command name

  cli::GlobalOptions options;
  app.add_option("--plugin-dir", options.plugin_dirs,
                 "Extra folder to search for plugins, before HOSTRUN_PLUGIN_PATH and the install location "
                 "(repeatable)")
      ->type_name("DIR")
      ->allow_extra_args(false);  // one folder per --plugin-dir, so a positional may follow
  app.add_option("--log-level", options.log_level, "Log level: trace, debug, info, warning, error, off")
      ->check([](const std::string& text) {
        return core::parse_log_level(text) ? std::string() : "unknown log level '" + text + "'";
      })
      ->capture_default_str();
  app.parse_complete_callback([&] {
    core::process_log_sink().set_level(*core::parse_log_level(options.log_level));
  });

  cli::add_plugins_command(app, options);
  cli::add_manifest_command(app, options);
  cli::add_chat_command(app, options);
  cli::add_tokenize_command(app, options);
  cli::add_bench_tokenizer_command(app, options);
  [[maybe_unused]] CLI::App* serve_group = cli::add_serve_command(app, options);
  cli::add_serve_client_commands(serve_group, options);
  cli::add_bench_serving_command(app, options);
  cli::add_bench_model_commands(app, options);
  cli::add_bench_perplexity_command(app, options);
  cli::add_lite_command(app, options);

  // CLI11 reports a mistyped command only as "a subcommand is required"; say what was typed.
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    for (const auto* sub : app.get_subcommands({})) known = known || sub->check_name(argv[1]);
    if (!known) {
      std::fprintf(stderr, "hostrun: unknown command '%s'; run 'hostrun --help' for the list\n", argv[1]);
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hostrun: error: %s\n", e.what());
    return 1;
  }
  return options.exit_code;
}
