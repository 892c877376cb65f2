// The flags every command that runs a model takes (LMDeploy's names), and how
// they become manifest overrides, so a flag and a manifest line are checked by
// the same code.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "runtime.hpp"

namespace hostrun::cli {

struct EngineFlags {
  std::string model_dir;
  std::string manifest;
  std::string chat_template;
  std::string device = "auto";
  std::string model_format;
  std::optional<int64_t> session_len, max_batch_size, max_prefill_token_num, cache_block_seq_len, num_kv_blocks;
  std::optional<double> cache_max_entry_count, request_timeout;
  std::optional<int64_t> max_queued_requests;
  std::optional<int64_t> quant_policy;
  bool enable_prefix_caching = false;
  std::vector<std::string> sets;

  void add_to(CLI::App* cmd) {
    cmd->add_option("--manifest", manifest, "Manifest to use instead of the built-in one for the model")
        ->check(CLI::ExistingFile);
    cmd->add_option("--chat-template", chat_template, "Chat template: a built-in name (llama3, llava-llama3) or a "
                                                      "TOML file with a [chat_template] table");
    cmd->add_option("--device", device, "auto, cpu or cuda")->capture_default_str();
    cmd->add_option("--model-format", model_format,
                    "What MODEL_DIR must be: hf (unquantized) or the quant_method of its quantization_config "
                    "(awq, fp8); default: whatever its config.json says");
    cmd->add_option("--session-len", session_len, "Most tokens (prompt + reply) a request may hold");
    cmd->add_option("--max-batch-size", max_batch_size, "Most sequences in one engine step");
    cmd->add_option("--max-prefill-token-num", max_prefill_token_num, "Most prompt tokens computed in one step");
    cmd->add_option("--cache-max-entry-count", cache_max_entry_count,
                    "Share of the memory left after the weights that the KV cache takes (default 0.8)");
    cmd->add_option("--cache-block-seq-len", cache_block_seq_len, "Tokens per KV-cache block (default 64)");
    cmd->add_option("--num-kv-blocks", num_kv_blocks, "Exactly this many KV-cache blocks");
    cmd->add_option("--max-queued-requests", max_queued_requests,
                    "Requests that may wait for a place in the batch; more are refused (HTTP 429). 0: no bound "
                    "(default 2048)");
    cmd->add_option("--request-timeout", request_timeout,
                    "Seconds a request may run before it ends with an error (HTTP streams end with it). 0: no limit");
    cmd->add_option("--quant-policy", quant_policy,
                    "KV-cache quantization (LMDeploy's number): 0 none, 8 int8, 4 int4; the manifest's KV cache "
                    "policy says which it has");
    cmd->add_flag("--enable-prefix-caching", enable_prefix_caching, "Reuse the KV blocks of identical prefixes");
    cmd->add_option("--set", sets, "Any manifest value: TABLE.KEY=VALUE (repeatable)")->type_name("TABLE.KEY=VALUE")->allow_extra_args(false);
  }

  // Overrides in flag order after the named ones, so --set has the last word.
  Result<core::RuntimeOptions> runtime_options(const std::vector<std::string>& plugin_dirs) const {
    core::RuntimeOptions o;
    o.model_dir = model_dir;
    o.manifest_file = manifest;
    o.chat_template = chat_template;
    o.device = device;
    o.model_format = model_format;
    o.plugin_dirs.assign(plugin_dirs.begin(), plugin_dirs.end());
    auto add = [&](const char* key, const auto& value, const char* flag) {
      if (value) o.overrides.push_back({key, fmt::format("{}", *value), flag});
    };
    add("engine.session_len", session_len, "--session-len");
    add("engine.max_batch_size", max_batch_size, "--max-batch-size");
    add("engine.max_prefill_token_num", max_prefill_token_num, "--max-prefill-token-num");
    add("engine.cache_max_entry_count", cache_max_entry_count, "--cache-max-entry-count");
    add("engine.cache_block_seq_len", cache_block_seq_len, "--cache-block-seq-len");
    add("engine.num_kv_blocks", num_kv_blocks, "--num-kv-blocks");
    add("engine.max_queued_requests", max_queued_requests, "--max-queued-requests");
    add("engine.request_timeout_s", request_timeout, "--request-timeout");
    // A setting of the KV cache policy: the format is the policy's business (kv_cache.hpp).
    add("kv_cache.quant_policy", quant_policy, "--quant-policy");
    if (enable_prefix_caching) o.overrides.push_back({"engine.enable_prefix_caching", "true", "--enable-prefix-caching"});
    for (const auto& assignment : sets) {
      size_t eq = assignment.find('=');
      if (eq == std::string::npos)
        return Status(ErrorCode::invalid_argument, fmt::format("--set '{}': expected TABLE.KEY=VALUE", assignment));
      o.overrides.push_back({assignment.substr(0, eq), assignment.substr(eq + 1), "--set " + assignment});
    }
    return o;
  }
};

}  // namespace hostrun::cli
