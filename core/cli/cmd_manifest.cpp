// `hostrun manifest check FILE`: validate a manifest as chat and serve do
// (every role object made for its device) and print the resolved wiring.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "commands.hpp"
#include "chat_template.hpp"
#include "manifest.hpp"
#include "manifest_table.hpp"
#include "runtime.hpp"

namespace hostrun::cli {

namespace {

struct ManifestCheckOptions {
  std::string file;
  std::vector<std::string> sets;
};

int check(const GlobalOptions& options, const ManifestCheckOptions& check_options) {
  auto manifest = core::Manifest::parse_file(check_options.file);
  if (!manifest) {
    fmt::print(stderr, "{}\n", manifest.status().message());
    return 1;
  }
  for (const auto& assignment : check_options.sets) {
    size_t eq = assignment.find('=');
    if (eq == std::string::npos) {
      fmt::print(stderr, "--set '{}': expected TABLE.KEY=VALUE\n", assignment);
      return 2;
    }
    Status set = manifest->set_override(assignment.substr(0, eq), assignment.substr(eq + 1), "--set " + assignment);
    if (!set.is_ok()) {
      fmt::print(stderr, "{}\n", set.message());
      return 2;
    }
  }
  core::PluginRegistry registry = load_plugins(options);
  auto resolved = core::resolve(*manifest, registry, core::host_table_schemas());
  if (!resolved) {
    fmt::print(stderr, "{}\n", resolved.status().message());
    return 1;
  }
  // Exactly what chat and serve do before reading weights: every role object
  // made for the [engine] device, settings checked by the plugins themselves.
  auto wired = core::wire(*resolved, registry, nullptr, check_options.file);
  if (!wired) {
    fmt::print(stderr, "{}\n", wired.status().message());
    return 1;
  }
  if (const core::ResolvedInstance* frontend = resolved->instance("frontend"))
    if (auto made = registry.create<Frontend>(frontend->plugin->name, frontend->settings, nullptr, "frontend",
                                              wired->device);
        !made) {
      fmt::print(stderr, "{}\n", made.status().message());
      return 1;
    }
  fmt::print("{}: ok\n", check_options.file);
  auto print_settings = [](const Settings& settings, const std::map<std::string, core::ValueOrigin>& origins) {
    for (const auto& [key, value] : settings.values()) {
      auto origin = origins.find(key);
      fmt::print("  {} = {}    # {}\n", key, core::format_setting(value),
                 origin == origins.end() ? "" : origin->second.describe());
    }
  };
  for (const auto& instance : resolved->instances) {
    fmt::print("[{}] {} -> plugin '{}' {} ({})\n", instance.table, role_name(instance.role), instance.plugin->name,
               instance.plugin->version, instance.plugin->file.string());
    print_settings(instance.settings, instance.origins);
  }
  for (const auto& table : resolved->host_tables) {
    fmt::print("[{}] host settings\n", table.name);
    print_settings(table.settings, table.origins);
  }
  return 0;
}

// The built-in manifest table: which manifest runs which folders, where, and
// whether its model plugin is in this build and can run there.
int table(const GlobalOptions& options) {
  core::PluginRegistry registry = load_plugins(options);
  fmt::print("{:<16} {:<34} {:<14} {:<6} {}\n", "manifest", "architectures", "quantization", "device", "model plugin");
  for (const auto& row : core::builtin_manifest_table()) {
    const Device device = row.device == "cuda" ? Device{DeviceKind::cuda, 0} : Device{DeviceKind::cpu, 0};
    Status can = core::probe_plugin(registry, row.model_plugin, Role::model, device);
    fmt::print("{:<16} {:<34} {:<14} {:<6} {}{}\n", row.manifest, fmt::join(row.architectures, ", "),
               fmt::join(row.quantizations, ", "), row.device, row.model_plugin,
               can ? "" : fmt::format(" (unavailable: {})", can.message()));
  }
  return 0;
}

}  // namespace

void add_manifest_command(CLI::App& app, GlobalOptions& options) {
  auto* manifest = app.add_subcommand("manifest", "Work with manifests (TOML files that wire plugins together)");
  manifest->require_subcommand(1);
  auto* cmd = manifest->add_subcommand("check", "Validate a manifest against the plugins it names and print the "
                                                "resolved wiring, defaults included");
  auto check_options = std::make_shared<ManifestCheckOptions>();
  cmd->add_option("FILE", check_options->file, "The manifest")->required()->check(CLI::ExistingFile);
  cmd->add_option("--set", check_options->sets, "Override a value as a flag would: TABLE.KEY=VALUE (repeatable)")
      ->type_name("TABLE.KEY=VALUE")
      ->allow_extra_args(false);
  cmd->callback([&options, check_options] { options.exit_code = check(options, *check_options); });
  auto* table_cmd = manifest->add_subcommand(
      "table", "Print the built-in manifest table: which manifest runs which architecture and quantization format on "
               "which device, and whether its model plugin can run here");
  table_cmd->callback([&options] { options.exit_code = table(options); });
}

}  // namespace hostrun::cli
