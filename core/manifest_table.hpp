// Which built-in manifest runs a model folder: a table keyed by architecture,
// quantization format and device, read from the manifests themselves (each
// says what it serves in its [serves] table and where it runs in [engine]
// device), so the host knows no model family and no fact is written twice.
#pragma once

#include <string>
#include <vector>

#include "checkpoint/folder_config.hpp"
#include "manifest.hpp"
#include "plugin_loader.hpp"

namespace hostrun::core {

// The [serves] host table: which folders a manifest runs.
HostTableSchema serves_schema();

struct ManifestRow {
  std::string manifest;                    // "llama3-cuda"
  std::vector<std::string> architectures;  // config.json's architectures[0] values it runs
  std::vector<std::string> quantizations;  // quantization_config.quant_method values; "none": unquantized
  std::string device;                      // [engine] device: "cpu" or "cuda"
  std::string model_plugin;                // [model] plugin, probed before the row is chosen
  std::string text;                        // the manifest itself
};

// Every built-in manifest as a row (builtin_manifests()).
std::vector<ManifestRow> builtin_manifest_table();

// "llama3-cpu: LlamaForCausalLM x none x cpu; ..." for messages.
std::string describe_table(const std::vector<ManifestRow>& table);

struct ManifestChoice {
  const ManifestRow* row = nullptr;
  std::string note;  // why auto chose the CPU, when it did
};

// The row for `folder` on `device` ("auto", "cpu" or "cuda"). auto takes the
// CUDA row when its model plugin is there and its probe accepts cuda:0, else
// the CPU row. An explicit device whose row's model plugin is missing or
// declines is an error naming the plugin, its file and the reason; a folder
// no row serves is "no plugin in this build handles A with Q on D", listing
// the table.
Result<ManifestChoice> choose_manifest(const std::vector<ManifestRow>& table, const checkpoint::FolderConfig& folder,
                                       const std::string& device, const PluginRegistry& registry);

// Whether `plugin` can run its `role` on `device`: found, has the role, and
// its probe (if any) accepts the device. The message names plugin and file.
Status probe_plugin(const PluginRegistry& registry, const std::string& plugin, Role role, const Device& device);

}  // namespace hostrun::core
