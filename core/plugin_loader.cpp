#include "plugin_loader.hpp"

#include "manifest.hpp"
#include "plugin_file.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <dlfcn.h>
#include <system_error>

namespace hostrun::core {

namespace fs = std::filesystem;

namespace {

// What a LibraryPin points at: the Boost.DLL handle and a count of pins.
struct PinnedLibrary {
  std::atomic<long> pins{0};
  boost::dll::shared_library library;
};

void retain_library(void* library) noexcept { static_cast<PinnedLibrary*>(library)->pins.fetch_add(1); }
void release_library(void* library) noexcept {
  auto* pinned = static_cast<PinnedLibrary*>(library);
  if (pinned->pins.fetch_sub(1) == 1) delete pinned;  // unloads (unless RTLD_NODELETE keeps it mapped)
}
constexpr LibraryPin::Ops kPinOps{&retain_library, &release_library};

}  // namespace

const RoleEntry* LoadedPlugin::role(Role r) const noexcept {
  for (const auto& entry : roles)
    if (entry.role == r) return &entry;
  return nullptr;
}

fs::path executable_dir() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : exe.parent_path();
}

std::vector<fs::path> plugin_search_path(const std::vector<fs::path>& plugin_dirs) {
  std::vector<fs::path> path(plugin_dirs.begin(), plugin_dirs.end());
  if (const char* env = std::getenv("HOSTRUN_PLUGIN_PATH")) {
    std::string_view rest = env;
    while (!rest.empty()) {
      size_t colon = rest.find(':');
      std::string_view entry = rest.substr(0, colon);
      if (!entry.empty()) path.emplace_back(entry);
      if (colon == std::string_view::npos) break;
      rest.remove_prefix(colon + 1);
    }
  }
  if (fs::path exe = executable_dir(); !exe.empty())
    path.push_back(exe.parent_path() / "lib" / "hostrun" / "plugins");
  return path;
}

void PluginRegistry::scan(const std::vector<fs::path>& folders) {
  for (const auto& folder : folders) {
    std::error_code ec;
    if (!fs::is_directory(folder, ec)) continue;
    searched_.push_back(folder);
    std::vector<fs::path> files;
    for (const auto& item : fs::directory_iterator(folder, ec))
      if (item.path().extension() == ".so" && item.is_regular_file(ec)) files.push_back(item.path());
    // Directory order is arbitrary; a sorted scan makes shadowing predictable.
    std::sort(files.begin(), files.end());
    for (const auto& file : files) load_file(file);
  }
}

void PluginRegistry::load_file(const fs::path& file) {
  std::error_code ec;
  fs::path canonical = fs::weakly_canonical(file, ec);
  if (ec) canonical = file;
  for (const auto& p : plugins_)
    if (p.file == canonical) return;  // the same folder listed twice

  auto refuse = [&](std::string reason) { refused_.push_back({canonical, std::move(reason)}); };
  if (Status file_ok = check_plugin_file(canonical); !file_ok) return refuse(file_ok.message());

  auto pinned = std::make_unique<PinnedLibrary>();
  boost::dll::shared_library* library = &pinned->library;
  boost::dll::fs::error_code load_error;
  // rtld_local keeps each plugin's symbols to itself, so two plugins may use
  // different versions of a library without interposing on each other.
  // RTLD_NODELETE keeps a library mapped once loaded: a CUDA plugin's kernels
  // are registered with the runtime when it is mapped, and after a dlclose a
  // second dlopen in the same process left them unregistered (llama_cuda's
  // RoPE launch failed with cudaErrorSymbolNotFound in tests/llama_cuda,
  // which loads the plugins once per registry).
  const auto mode = boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local |
                    static_cast<boost::dll::load_mode::type>(RTLD_NODELETE);
  library->load(canonical, load_error, mode);
  if (load_error) {
    // Boost.DLL reports an errno-like code ("Bad file descriptor"); the
    // dynamic loader's own message (a missing dependency, an undefined
    // symbol) is what tells a user what to fix, so ask it directly.
    std::string reason = load_error.message();
    if (void* handle = ::dlopen(canonical.c_str(), RTLD_LAZY | RTLD_LOCAL)) ::dlclose(handle);
    else if (const char* dl = ::dlerror()) reason = dl;
    return refuse(fmt::format("cannot be loaded: {}", reason));
  }
  if (!library->has(HOSTRUN_PLUGIN_ENTRY_SYMBOL))
    return refuse("not a hostrun plugin: it exports no '" HOSTRUN_PLUGIN_ENTRY_SYMBOL "' symbol");

  using EntryFn = const PluginDescriptor*() noexcept;
  const PluginDescriptor* descriptor = library->get<EntryFn>(HOSTRUN_PLUGIN_ENTRY_SYMBOL)();
  if (!descriptor) return refuse("its entry point returned no descriptor");

  // The ABI version sits at offset 0 in every ABI; nothing else is read before it matches.
  uint32_t abi = descriptor->abi_version;
  if (abi != HOSTRUN_ABI_VERSION)
    return refuse(fmt::format("built for plugin ABI version {}, but this hostrun has ABI version {}; rebuild "
                              "the plugin against SDK {}",
                              abi, HOSTRUN_ABI_VERSION, HOSTRUN_SDK_VERSION_STRING));
  if (descriptor->struct_size < kDescriptorBaseSize)
    return refuse(fmt::format("its descriptor is {} bytes, smaller than the {} every ABI {} plugin has",
                              descriptor->struct_size, kDescriptorBaseSize, HOSTRUN_ABI_VERSION));
  if (!descriptor->name || !*descriptor->name) return refuse("its descriptor has no name");
  if (descriptor->role_count == 0 || !descriptor->roles) return refuse("its descriptor lists no roles");

  LoadedPlugin plugin;
  plugin.file = canonical;
  plugin.name = descriptor->name;
  plugin.version = descriptor->version ? descriptor->version : "";
  plugin.description = descriptor->description ? descriptor->description : "";
  plugin.sdk_version = descriptor->sdk_version ? descriptor->sdk_version : "";
  plugin.roles.assign(descriptor->roles, descriptor->roles + descriptor->role_count);
  for (const auto& entry : plugin.roles) {
    if (!entry.create) return refuse(fmt::format("role '{}' has no factory", role_name(entry.role)));
    for (uint32_t i = 0; i < entry.settings_count; ++i)
      if (!entry.settings || !entry.settings[i].key)
        return refuse(fmt::format("role '{}' declares a setting without a key", role_name(entry.role)));
  }
  if (const LoadedPlugin* earlier = find(plugin.name)) {
    refuse(fmt::format("plugin name '{}' is already taken by {}, which shadows this one", plugin.name,
                       earlier->file.string()));
    refused_.back().shadowed_by = earlier->file;
    return;
  }
  plugin.library = LibraryPin(pinned.release(), &kPinOps);
  plugins_.push_back(std::move(plugin));
}

const LoadedPlugin* PluginRegistry::find(std::string_view name) const noexcept {
  for (const auto& p : plugins_)
    if (p.name == name) return &p;
  return nullptr;
}

Result<std::shared_ptr<PluginObject>> PluginRegistry::create(std::string_view name, Role role,
                                                             const Settings& settings, LogSink* log_sink,
                                                             std::string_view instance_name, Device device) const {
  const LoadedPlugin* plugin = find(name);
  if (!plugin) {
    std::string known;
    for (const auto& p : plugins_) known += (known.empty() ? "" : ", ") + p.name;
    return Status(ErrorCode::not_found,
                  fmt::format("no plugin named '{}' was found (loaded: {})", name, known.empty() ? "none" : known));
  }
  const RoleEntry* entry = plugin->role(role);
  if (!entry)
    return Status(ErrorCode::invalid_argument, fmt::format("plugin '{}' ({}) has no '{}' role", plugin->name,
                                                           plugin->file.string(), role_name(role)));
  if (entry->probe) {
    Status can_run = entry->probe(device);
    if (!can_run.is_ok())
      return Status(ErrorCode::unsupported, fmt::format("plugin '{}' ({}) cannot run on {}: {}", plugin->name,
                                                        plugin->file.string(), device_kind_name(device.kind),
                                                        can_run.message()));
  }
  // Declared defaults for keys not given: a manifest fills them too, so code
  // that creates a plugin directly (tests, embedders) sees the same settings.
  Settings filled = settings;
  for (uint32_t i = 0; i < entry->settings_count; ++i) {
    const SettingSpec& spec = entry->settings[i];
    if (!filled.has(spec.key))
      if (auto fallback = default_setting_value(spec)) filled.set(spec.key, std::move(*fallback));
  }
  std::string instance(instance_name.empty() ? role_name(role) : instance_name);
  CreateContext context;
  context.settings = &filled;
  context.log_sink = log_sink;
  context.instance_name = instance.c_str();
  context.library = plugin->library;
  Status failure;
  PluginObject* raw = entry->create(context, &failure);
  if (!raw) {
    if (failure.is_ok()) failure = Status(ErrorCode::internal, "the factory returned nothing and no error");
    return Status(failure.code(), fmt::format("plugin '{}' ({}): {}", plugin->name, plugin->file.string(), failure.message()));
  }
  // The deleter runs the plugin's own destructor, then lets go of the library.
  return std::shared_ptr<PluginObject>(raw, PinnedDelete{plugin->library});
}

}  // namespace hostrun::core
