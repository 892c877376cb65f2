// What the bench commands that run a model locally share: MODEL_DIR and the
// engine flags (--quant-policy and --model-format among them), the runtime,
// and the JSON they write.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "commands.hpp"
#include "engine_flags.hpp"

namespace hostrun::cli {

struct BenchModelFlags {
  EngineFlags engine;

  void add_to(CLI::App* cmd);
};

// The runtime for `hostrun bench <command>`, or null with exit_code set after printing why.
std::unique_ptr<core::Runtime> open_bench_runtime(const BenchModelFlags& flags, const GlobalOptions& global,
                                                  const char* command, int& exit_code);

// The engine's settings as a bench JSON records them.
nlohmann::json engine_json(core::Runtime& runtime, const EngineFlags& flags);

// The engine's counters after a run, as a bench JSON records them.
nlohmann::json engine_stats_json(const core::EngineStats& stats);

// Writes `j` to `path` (nothing when empty); an exit status.
int write_json(const std::string& path, const nlohmann::json& j, const char* command);

}  // namespace hostrun::cli
