// Loading a Tokenizer plugin from a path, for the commands that need one
// without a manifest (tokenize, bench tokenizer).
#pragma once

#include <fmt/format.h>

#include <string>

#include "log.hpp"
#include "manifest.hpp"
#include "plugin_loader.hpp"

namespace hostrun::cli {

// Makes a Tokenizer from `plugin` with its `file` setting set to `path`,
// validated against what the plugin declares, as a manifest's would be.
inline Result<core::PluginHandle<Tokenizer>> load_tokenizer(const core::PluginRegistry& registry,
                                                            const std::string& plugin, const std::string& path) {
  const core::LoadedPlugin* found = registry.find(plugin);
  if (!found) {
    std::string searched;
    for (const auto& dir : registry.searched()) searched += (searched.empty() ? "" : ", ") + dir.string();
    return Status(ErrorCode::not_found,
                  fmt::format("the tokenizer plugin '{}' was not found (searched: {}; see `hostrun plugins`)", plugin,
                              searched.empty() ? "no plugin folder exists" : searched));
  }
  const RoleEntry* entry = found->role(Role::tokenizer);
  if (!entry)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("plugin '{}' ({}) has no tokenizer role", plugin, found->file.string()));
  std::map<std::string, core::RawValue> values;
  values["file"].flag_text = path;
  values["file"].origin.label = "MODEL";
  std::map<std::string, core::ValueOrigin> origins;
  std::vector<std::string> problems;
  Settings settings = core::validate_settings(std::span(entry->settings, entry->settings_count), values, "tokenizer",
                                              fmt::format("plugin '{}'", plugin), {}, origins, problems);
  if (!problems.empty()) {
    std::string joined;
    for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
    return Status(ErrorCode::invalid_argument, joined);
  }
  return registry.create<Tokenizer>(plugin, settings, &core::process_log_sink(), "tokenizer");
}

}  // namespace hostrun::cli
