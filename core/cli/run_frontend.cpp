// Running a frontend plugin over the local engine, for chat and serve.
#include "run_frontend.hpp"

#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "commands.hpp"
#include "log.hpp"
#include "manifest.hpp"

namespace hostrun::cli {

namespace {

// SIGINT/SIGTERM stop the frontend from an ordinary thread (stop() takes
// locks, which a signal handler must not); a second signal, or a frontend that
// does not return within a few seconds, ends the process.
void watch_signals(Frontend* frontend) {
  std::thread([frontend] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int signal_number = 0;
    sigwait(&set, &signal_number);
    frontend->stop();
    std::thread([] {
      std::this_thread::sleep_for(std::chrono::seconds(3));
      std::_Exit(130);
    }).detach();
    sigwait(&set, &signal_number);
    std::_Exit(130);
  }).detach();
}

}  // namespace

std::string comma_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? "," : "") + items[i];
  return out;
}

std::optional<std::string> empty_api_key_problem(bool given, const std::vector<std::string>& keys) {
  if (!given) return std::nullopt;
  const bool any_empty = keys.empty() || std::any_of(keys.begin(), keys.end(), [](const auto& k) { return k.empty(); });
  if (!any_empty) return std::nullopt;
  return std::string("--api-keys was given an empty key; a server with an empty key list would let anyone in, so "
                     "give each key or leave the flag out");
}

void block_stop_signals() {
  // Every thread made from here on inherits the mask, so only the watcher sees the signals.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int run_frontend(const EngineFlags& flags, const std::vector<std::string>& plugin_dirs,
                 std::vector<core::ManifestOverride> frontend_overrides) {
  auto options = flags.runtime_options(plugin_dirs);
  if (!options) {
    fmt::print(stderr, "hostrun: {}\n", options.status().message());
    return 2;
  }
  options->overrides.insert(options->overrides.begin(), frontend_overrides.begin(), frontend_overrides.end());
  options->frontend_first = true;
  block_stop_signals();
  if (flags.model_dir.empty())
    fmt::print(stderr, "hostrun: no MODEL_DIR given: running the small dictionary model hostrun ships ({}; "
               "models/small/README.md says what it is)\n",
               core::shipped_model_dir().string());
  auto runtime = core::Runtime::open(*options, &core::process_log_sink());
  if (!runtime) {
    fmt::print(stderr, "hostrun: {}\n", runtime.status().message());
    return 1;
  }
  auto frontend = (*runtime)->make_frontend();
  if (!frontend) {
    fmt::print(stderr, "hostrun: {}\n", frontend.status().message());
    return 1;
  }
  watch_signals(frontend->get());
  Status ran = (*frontend)->run((*runtime)->engine());
  if (!ran) {
    fmt::print(stderr, "hostrun: {}\n", ran.message());
    return 1;
  }
  return 0;
}

int run_frontend(const std::vector<std::string>& plugin_dirs, const std::vector<core::ManifestOverride>& frontend_overrides,
                 const EngineOpener& open_engine, const std::string& manifest_file) {
  // The plugin and its settings, checked before anything connects anywhere.
  std::string plugin, manifest_plugin;
  std::map<std::string, core::RawValue> values;
  std::filesystem::path base_dir;
  if (!manifest_file.empty()) {
    auto manifest = core::Manifest::parse_file(manifest_file);
    if (!manifest) {
      fmt::print(stderr, "hostrun: {}\n", manifest.status().message());
      return 2;
    }
    for (const auto& table : manifest->tables()) {
      if (table.name != "frontend") {
        fmt::print(stderr, "hostrun: {}: [{}] configures a local engine, and this command talks to a server; "
                           "expected a [frontend] table only\n", table.origin.describe(), table.name);
        return 2;
      }
      values = table.values;  // the flags below override any of these
      manifest_plugin = table.plugin;
    }
    base_dir = manifest->base_dir();
  }
  for (const auto& o : frontend_overrides) {
    std::string_view key = o.key;
    if (!key.starts_with("frontend.")) {
      fmt::print(stderr, "hostrun: {}: '{}' is not a frontend setting (expected frontend.KEY)\n", o.label, o.key);
      return 2;
    }
    key.remove_prefix(9);
    if (key == "plugin") {
      plugin = o.value;
      continue;
    }
    core::RawValue raw;
    raw.flag_text = o.value;
    raw.origin.label = o.label;
    values[std::string(key)] = std::move(raw);
  }
  if (!manifest_plugin.empty() && manifest_plugin != plugin) {
    fmt::print(stderr, "hostrun: {}: [frontend] names plugin '{}', but this command runs '{}'\n", manifest_file,
               manifest_plugin, plugin);
    return 2;
  }
  block_stop_signals();
  GlobalOptions global;
  global.plugin_dirs = plugin_dirs;
  core::PluginRegistry registry = load_plugins(global);
  const core::LoadedPlugin* found = registry.find(plugin);
  if (!found) {
    std::string searched;
    for (const auto& dir : registry.searched()) searched += (searched.empty() ? "" : ", ") + dir.string();
    fmt::print(stderr, "hostrun: the frontend plugin '{}' was not found (searched: {}; see `hostrun plugins`)\n", plugin,
               searched.empty() ? "no plugin folder exists" : searched);
    return 1;
  }
  const RoleEntry* entry = found->role(Role::frontend);
  if (!entry) {
    fmt::print(stderr, "hostrun: plugin '{}' ({}) has no frontend role\n", plugin, found->file.string());
    return 1;
  }
  std::map<std::string, core::ValueOrigin> origins;
  std::vector<std::string> problems;
  Settings settings = core::validate_settings(std::span(entry->settings, entry->settings_count), values, "frontend",
                                              fmt::format("plugin '{}'", plugin), base_dir, origins, problems);
  if (!problems.empty()) {
    for (const auto& p : problems) fmt::print(stderr, "hostrun: {}\n", p);
    return 2;
  }
  auto frontend = registry.create<Frontend>(plugin, settings, &core::process_log_sink(), "frontend");
  if (!frontend) {
    fmt::print(stderr, "hostrun: {}\n", frontend.status().message());
    return 1;
  }
  auto engine = open_engine();
  if (!engine) {
    fmt::print(stderr, "hostrun: {}\n", engine.status().message());
    return 1;
  }
  watch_signals(frontend->get());
  Status ran = (*frontend)->run(**engine);
  frontend->reset();  // the frontend goes before the engine it talked to
  if (!ran) {
    fmt::print(stderr, "hostrun: {}\n", ran.message());
    return 1;
  }
  return 0;
}

}  // namespace hostrun::cli
