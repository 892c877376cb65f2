// `hostrun plugins`: what the loader found, and why any library was refused.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "commands.hpp"

namespace hostrun::cli {

namespace {

std::string roles_of(const core::LoadedPlugin& plugin) {
  std::string out;
  for (const auto& entry : plugin.roles) out += (out.empty() ? "" : ",") + std::string(role_name(entry.role));
  return out;
}

void print_table(const core::PluginRegistry& registry) {
  std::string searched;
  for (const auto& dir : registry.searched()) searched += "\n  " + dir.string();
  fmt::print("Searched:{}\n\n", searched.empty() ? " (no plugin folder exists)" : searched);
  if (registry.plugins().empty()) {
    fmt::print("No plugins found.\n");
  } else {
    size_t name_width = 4, role_width = 4, version_width = 7;
    for (const auto& p : registry.plugins()) {
      name_width = std::max(name_width, p.name.size());
      role_width = std::max(role_width, roles_of(p).size());
      version_width = std::max(version_width, p.version.size());
    }
    fmt::print("{:<{}}  {:<{}}  {:<{}}  {}\n", "NAME", name_width, "ROLE", role_width, "VERSION", version_width,
               "FILE");
    for (const auto& p : registry.plugins()) {
      fmt::print("{:<{}}  {:<{}}  {:<{}}  {}\n", p.name, name_width, roles_of(p), role_width, p.version,
                 version_width, p.file.string());
      if (!p.description.empty()) fmt::print("{:<{}}  {}\n", "", name_width, p.description);
    }
  }
  if (!registry.refused().empty()) {
    fmt::print("\nRefused:\n");
    for (const auto& r : registry.refused()) fmt::print("  {}: {}\n", r.file.string(), r.reason);
  }
}

nlohmann::json to_json(const core::PluginRegistry& registry) {
  nlohmann::json out;
  out["abi_version"] = HOSTRUN_ABI_VERSION;
  out["searched"] = nlohmann::json::array();
  for (const auto& dir : registry.searched()) out["searched"].push_back(dir.string());
  out["plugins"] = nlohmann::json::array();
  for (const auto& p : registry.plugins()) {
    nlohmann::json roles = nlohmann::json::array();
    for (const auto& entry : p.roles) {
      nlohmann::json settings = nlohmann::json::array();
      for (uint32_t i = 0; i < entry.settings_count; ++i) {
        const SettingSpec& s = entry.settings[i];
        settings.push_back({{"key", s.key},
                            {"type", setting_type_name(s.type)},
                            {"required", s.required},
                            {"default", s.default_toml ? s.default_toml : ""},
                            {"help", s.help ? s.help : ""}});
      }
      roles.push_back({{"role", role_name(entry.role)}, {"settings", settings}});
    }
    out["plugins"].push_back({{"name", p.name},
                              {"version", p.version},
                              {"description", p.description},
                              {"sdk_version", p.sdk_version},
                              {"file", p.file.string()},
                              {"roles", roles}});
  }
  out["refused"] = nlohmann::json::array();
  for (const auto& r : registry.refused()) out["refused"].push_back({{"file", r.file.string()}, {"reason", r.reason}});
  return out;
}

}  // namespace

void add_plugins_command(CLI::App& app, GlobalOptions& options) {
  auto* cmd = app.add_subcommand("plugins", "List the plugins found (name, role, version, file) and why any "
                                            "library was refused");
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "Print JSON, with each role's settings");
  cmd->callback([&options, json] {
    core::PluginRegistry registry = load_plugins(options);
    if (*json)
      fmt::print("{}\n", to_json(registry).dump(2));
    else
      print_table(registry);
  });
}

}  // namespace hostrun::cli
