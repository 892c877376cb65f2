// Running a frontend plugin over the local engine, for chat and serve.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine_flags.hpp"
#include "runtime.hpp"

namespace hostrun::cli {

// A list flag as a frontend override: items joined by commas (manifest.cpp splits them again).
std::string comma_list(const std::vector<std::string>& items);

// Why `--api-keys` as given cannot be used (it was given, and a key is empty,
// or there is none: `--api-keys ""` would otherwise mean no authentication),
// or nothing.
std::optional<std::string> empty_api_key_problem(bool given, const std::vector<std::string>& keys);

// Blocks SIGINT/SIGTERM in this thread and every thread it makes later, so
// that run_frontend's watcher thread alone takes them (through a signalfd).
void block_stop_signals();

// Opens the runtime for `flags` (plus `frontend_overrides`, which name the
// frontend plugin and its settings), runs the frontend until it returns, and
// stops it on SIGINT/SIGTERM. Returns the process exit status.
int run_frontend(const EngineFlags& flags, const std::vector<std::string>& plugin_dirs,
                 std::vector<core::ManifestOverride> frontend_overrides);

// Makes the engine a frontend runs over when it is not the local one (e.g. a
// core::RemoteEngine); called after the stop signals are blocked.
using EngineOpener = std::function<Result<std::unique_ptr<EngineHandle>>()>;

// Runs a frontend plugin over an engine `open_engine` makes:
// `frontend_overrides` name the plugin ("frontend.plugin") and its settings
// ("frontend.KEY"), over those of `manifest_file`'s [frontend] table when one
// is given (a manifest with any other table is refused: there is no local
// engine for it to configure). They are validated against what the plugin
// declares, as a manifest table would be, before the engine is opened. Stops
// it on SIGINT/SIGTERM. Returns the process exit status.
int run_frontend(const std::vector<std::string>& plugin_dirs, const std::vector<core::ManifestOverride>& frontend_overrides,
                 const EngineOpener& open_engine, const std::string& manifest_file = {});

}  // namespace hostrun::cli
