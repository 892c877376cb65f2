// Running a frontend plugin over the local engine, for chat and serve.
#include "run_frontend.hpp"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "commands.hpp"
#include "log.hpp"
#include "manifest.hpp"

namespace hostrun::cli {

namespace {

sigset_t stop_signal_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// SIGINT/SIGTERM stop the frontend from an ordinary thread (stop() takes
// locks, which a signal handler must not). A frontend that has not returned
// from run() 3 s after the signal (the chat frontend blocked on a terminal,
// say), or a second signal, ends the process with status 130.
//
// The thread ends before run_frontend returns. A thread still running when
// the process exits has its thread-local storage scanned by LeakSanitizer's
// tracer, and the sanitizer runtime of GCC 12 (up to 13 and LLVM 16) misreads
// a plugin's dynamic TLS block that malloc placed 16 bytes into a page as
// glibc 2.19's header, takes the two words before it as a range and dies
// reading it ("Tracer caught signal 11"): the watcher of `serve gradio` had
// touched the gradio plugin's 16 bytes of TLS (Asio's) in stop(). Nor may a
// timer call _Exit while the process tears down: under ASan freeing a large
// KV cache and the leak check itself take longer than 3 s. So the deadline
// covers run() only, and nothing of this outlives the function.
class StopSignals {
 public:
  // The signals must already be blocked in every thread (block_stop_signals).
  StopSignals() = default;
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  ~StopSignals() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard lock(mutex_);
      quit_ = true;
    }
    wake();
    thread_.join();
    ::close(signal_fd_);
    ::close(wake_fd_);
  }

  // Starts watching: the first signal stops `frontend`. A signal sent before
  // this stays pending until now.
  void watch(Frontend* frontend) {
    sigset_t set = stop_signal_set();
    signal_fd_ = ::signalfd(-1, &set, SFD_CLOEXEC);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (signal_fd_ < 0 || wake_fd_ < 0) {
      // Without them a signal would stay blocked and pending forever; the default action at least ends the process.
      fmt::print(stderr, "hostrun: cannot watch SIGINT/SIGTERM ({}); they end the process at once\n",
                 std::strerror(errno));
      for (int* fd : {&signal_fd_, &wake_fd_})
        if (*fd >= 0) ::close(std::exchange(*fd, -1));
      pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      return;
    }
    frontend_ = frontend;
    thread_ = std::thread([this] { run(); });
  }

  // run() returned: the frontend is not stopped any more (it may be gone),
  // and no deadline runs. A second signal still ends the process.
  void frontend_returned() {
    {
      std::lock_guard lock(mutex_);
      frontend_ = nullptr;
    }
    wake();
  }

 private:
  void wake() {
    if (wake_fd_ < 0) return;
    uint64_t one = 1;
    [[maybe_unused]] ssize_t written = ::write(wake_fd_, &one, sizeof one);
  }

  void run() {
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> deadline;  // set by the first signal while run() runs
    bool signalled = false;
    for (;;) {
      int timeout_ms = -1;
      {
        std::lock_guard lock(mutex_);
        if (quit_) return;
        if (!frontend_) deadline.reset();
        if (deadline) {
          auto left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now()).count();
          if (left <= 0) std::_Exit(130);
          timeout_ms = int(left);
        }
      }
      pollfd fds[2] = {{signal_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      int ready = ::poll(fds, 2, timeout_ms);
      if (ready < 0) {
        if (errno == EINTR) continue;
        // Nothing else would take the signals, so a stop could never be asked for again.
        fmt::print(stderr, "hostrun: waiting for SIGINT/SIGTERM failed ({}); exiting\n", std::strerror(errno));
        std::_Exit(1);
      }
      if (fds[1].revents & POLLIN) {
        uint64_t count = 0;
        [[maybe_unused]] ssize_t got = ::read(wake_fd_, &count, sizeof count);
      }
      if (!(fds[0].revents & POLLIN)) continue;  // a wake-up or the deadline: checked at the top
      signalfd_siginfo info{};
      if (::read(signal_fd_, &info, sizeof info) != ssize_t(sizeof info)) continue;
      if (signalled) std::_Exit(130);
      signalled = true;
      std::lock_guard lock(mutex_);
      if (frontend_) {
        frontend_->stop();  // under the lock: frontend_returned() waits for it before the frontend goes
        deadline = Clock::now() + std::chrono::seconds(3);
      }
    }
  }

  std::mutex mutex_;
  Frontend* frontend_ = nullptr;
  bool quit_ = false;
  int signal_fd_ = -1;
  int wake_fd_ = -1;
  std::thread thread_;
};

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
  sigset_t set = stop_signal_set();
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
  StopSignals stop_signals;  // before the runtime, so that it is joined after everything else is gone
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
  stop_signals.watch(frontend->get());
  Status ran = (*frontend)->run((*runtime)->engine());
  stop_signals.frontend_returned();
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
  StopSignals stop_signals;  // before the plugins, so that it is joined after everything else is gone
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
  stop_signals.watch(frontend->get());
  Status ran = (*frontend)->run(**engine);
  stop_signals.frontend_returned();
  frontend->reset();  // the frontend goes before the engine it talked to
  if (!ran) {
    fmt::print(stderr, "hostrun: {}\n", ran.message());
    return 1;
  }
  return 0;
}

}  // namespace hostrun::cli
