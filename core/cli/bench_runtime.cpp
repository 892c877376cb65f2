#include "bench_runtime.hpp"

#include <fmt/format.h>

#include <fstream>

#include "log.hpp"

namespace hostrun::cli {

void BenchModelFlags::add_to(CLI::App* cmd) {
  cmd->add_option("MODEL_DIR", engine.model_dir, "HF model folder (config.json, *.safetensors, tokenizer.json)")
      ->required();
  engine.add_to(cmd);
}

std::unique_ptr<core::Runtime> open_bench_runtime(const BenchModelFlags& flags, const GlobalOptions& global,
                                                  const char* command, int& exit_code) {
  auto options = flags.engine.runtime_options(global.plugin_dirs);
  if (!options) {
    fmt::print(stderr, "hostrun bench {}: {}\n", command, options.status().message());
    exit_code = 2;
    return nullptr;
  }
  auto runtime = core::Runtime::open(*options, &core::process_log_sink());
  if (!runtime) {
    fmt::print(stderr, "hostrun bench {}: {}\n", command, runtime.status().message());
    exit_code = 1;
    return nullptr;
  }
  return std::move(runtime.value());
}

nlohmann::json engine_json(core::Runtime& runtime, const EngineFlags& flags) {
  nlohmann::json j;
  j["model_dir"] = runtime.model_dir();
  j["manifest"] = runtime.manifest_name();
  j["device"] = flags.device;
  j["weight_bytes"] = runtime.model_info().weight_bytes;  // as the model holds them on its device
  j["kv_blocks"] = runtime.engine().counters().kv_blocks_total;
  const KvFormat kv = runtime.kv_format();
  j["kv_format"] = kv.name;
  j["quant_policy"] = kv.quant_policy;
  j["session_len"] = runtime.engine().info().session_len;
  if (flags.cache_max_entry_count) j["cache_max_entry_count"] = *flags.cache_max_entry_count;
  if (flags.max_batch_size) j["max_batch_size"] = *flags.max_batch_size;
  if (flags.max_prefill_token_num) j["max_prefill_token_num"] = *flags.max_prefill_token_num;
  return j;
}

nlohmann::json engine_stats_json(const core::EngineStats& stats) {
  return {{"steps", stats.steps},
          {"prefill_steps", stats.prefill_steps},
          {"prefill_step_tokens", stats.prefill_step_tokens},
          {"prefill_tokens_computed", stats.prefill_tokens_computed},
          {"decode_tokens_computed", stats.decode_tokens_computed},
          {"prefix_cache_hit_tokens", stats.prefix_cache_hit_tokens},
          {"preemptions", stats.preemptions},
          {"overlapped_steps", stats.overlapped_steps},
          {"images_encoded", stats.images_encoded},
          {"model_step_s", stats.model_step_seconds},
          {"scheduling_s", stats.scheduling_seconds}};
}

int write_json(const std::string& path, const nlohmann::json& j, const char* command) {
  if (path.empty()) return 0;
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  if (!out) {
    fmt::print(stderr, "hostrun bench {}: cannot write {}\n", command, path);
    return 1;
  }
  return 0;
}

}  // namespace hostrun::cli
