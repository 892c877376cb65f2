// Finds plugin libraries, checks their ABI, and makes objects from them.
//
// Search order (first library to claim a plugin name wins; later ones are
// reported as shadowed): each --plugin-dir, then each entry of
// HOSTRUN_PLUGIN_PATH (colon-separated), then <exe>/../lib/hostrun/plugins.
//
// Lifetime: every library gets a LibraryPin (sdk plugin_object.hpp) when it is
// loaded. The registry holds one; every object a plugin makes is returned
// inside a shared_ptr whose deleter holds another, and the plugin gets a copy
// in its CreateContext for the objects it hands out later (PluginPtr). The
// library is unloaded only after the last pin is gone (and, besides, it is
// mapped RTLD_NODELETE).
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "hostrun/plugin.hpp"

namespace boost::dll {
class shared_library;
}

namespace hostrun::core {

struct LoadedPlugin {
  std::filesystem::path file;
  std::string name;
  std::string version;
  std::string description;
  std::string sdk_version;
  std::vector<RoleEntry> roles;
  LibraryPin library;  // while any copy lives, the library stays loaded

  const RoleEntry* role(Role r) const noexcept;
};

struct RefusedLibrary {
  std::filesystem::path file;
  std::string reason;
  // Set when the library was refused because an earlier one in the search
  // path already claimed its plugin name: that library's file.
  std::filesystem::path shadowed_by;
};

// An object made by a plugin; keeps its library loaded while alive.
template <typename Interface>
using PluginHandle = std::shared_ptr<Interface>;

class PluginRegistry {
 public:
  // Scans the given folders in order; missing folders are skipped silently
  // (the install location may not exist in a build tree and vice versa).
  void scan(const std::vector<std::filesystem::path>& folders);
  // Loads one library file (used by scan, and by tests).
  void load_file(const std::filesystem::path& file);

  const std::vector<LoadedPlugin>& plugins() const noexcept { return plugins_; }
  const std::vector<RefusedLibrary>& refused() const noexcept { return refused_; }
  const std::vector<std::filesystem::path>& searched() const noexcept { return searched_; }

  const LoadedPlugin* find(std::string_view name) const noexcept;

  // Makes an object of `role` from plugin `name`, after the role's probe
  // accepted `device`. Errors name the plugin and its file.
  Result<std::shared_ptr<PluginObject>> create(std::string_view name, Role role, const Settings& settings,
                                               LogSink* log_sink, std::string_view instance_name = "",
                                               Device device = {}) const;

  template <typename Interface>
  Result<PluginHandle<Interface>> create(std::string_view name, const Settings& settings, LogSink* log_sink,
                                         std::string_view instance_name = "", Device device = {}) const {
    auto made = create(name, role_of<Interface>(), settings, log_sink, instance_name, device);
    if (!made) return made.status();
    // The factory returned the Interface's own PluginObject base (plugin_object.hpp),
    // so a static downcast recovers it; no RTTI crosses the library boundary.
    auto& object = made.value();
    return PluginHandle<Interface>(object, static_cast<Interface*>(object.get()));
  }

 private:
  std::vector<LoadedPlugin> plugins_;
  std::vector<RefusedLibrary> refused_;
  std::vector<std::filesystem::path> searched_;
};

// The default search path: flags, then HOSTRUN_PLUGIN_PATH, then next to the executable.
std::vector<std::filesystem::path> plugin_search_path(const std::vector<std::filesystem::path>& plugin_dirs);

// The folder of the running executable (from /proc/self/exe).
std::filesystem::path executable_dir();

}  // namespace hostrun::core
