#include "manifest_table.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "builtin_manifests.hpp"

namespace hostrun::core {

namespace {

const SettingSpec kServesSettings[] = {
    {"architectures", SettingType::string_list,
     "config.json architectures this manifest runs (e.g. [\"LlamaForCausalLM\"])", true},
    {"quantization", SettingType::string_list,
     "quantization_config.quant_method values it runs; \"none\" for unquantized folders", false, "[\"none\"]"},
};

std::vector<std::string> strings_of(const ManifestTable* table, const char* key, std::vector<std::string> fallback) {
  if (!table) return fallback;
  auto it = table->values.find(key);
  if (it == table->values.end() || !it->second.value) return fallback;
  if (auto* list = std::get_if<std::vector<std::string>>(&*it->second.value)) return *list;
  if (auto* one = std::get_if<std::string>(&*it->second.value)) return {*one};
  return fallback;
}

bool contains(const std::vector<std::string>& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

Device device_named(const std::string& name) {
  return name == "cuda" ? Device{DeviceKind::cuda, 0} : Device{DeviceKind::cpu, 0};
}

}  // namespace

HostTableSchema serves_schema() { return {"serves", kServesSettings}; }

std::vector<ManifestRow> builtin_manifest_table() {
  std::vector<ManifestRow> rows;
  for (const auto& builtin : builtin_manifests()) {
    auto manifest = Manifest::parse_string(builtin.text, "builtin:" + std::string(builtin.name), {});
    if (!manifest) continue;  // tests/unit checks that every built-in manifest parses and has a row
    ManifestRow row;
    row.manifest = std::string(builtin.name);
    row.architectures = strings_of(manifest->table("serves"), "architectures", {});
    row.quantizations = strings_of(manifest->table("serves"), "quantization", {"none"});
    std::vector<std::string> device = strings_of(manifest->table("engine"), "device", {"cpu"});
    row.device = device.empty() ? "cpu" : device.front();
    if (const ManifestTable* model = manifest->table("model")) row.model_plugin = model->plugin;
    row.text = std::string(builtin.text);
    if (!row.architectures.empty()) rows.push_back(std::move(row));
  }
  return rows;
}

std::string describe_table(const std::vector<ManifestRow>& table) {
  std::string out;
  for (const auto& row : table)
    out += fmt::format("{}{}: {} x {} x {}", out.empty() ? "" : "; ", row.manifest, fmt::join(row.architectures, "|"),
                       fmt::join(row.quantizations, "|"), row.device);
  return out.empty() ? "(empty)" : out;
}

Status probe_plugin(const PluginRegistry& registry, const std::string& plugin, Role role, const Device& device) {
  const LoadedPlugin* found = registry.find(plugin);
  if (!found) return Status(ErrorCode::not_found, fmt::format("the plugin '{}' is not in the plugin search path", plugin));
  const RoleEntry* entry = found->role(role);
  if (!entry)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("plugin '{}' ({}) has no {} role", plugin, found->file.string(), role_name(role)));
  if (entry->probe)
    if (Status can = entry->probe(device); !can)
      return Status(ErrorCode::unsupported, fmt::format("plugin '{}' ({}) cannot run on {}: {}", plugin,
                                                        found->file.string(), device_kind_name(device.kind),
                                                        can.message()));
  return Status();
}

Result<ManifestChoice> choose_manifest(const std::vector<ManifestRow>& table, const checkpoint::FolderConfig& folder,
                                       const std::string& device, const PluginRegistry& registry) {
  const std::string quantization = folder.quantization();
  auto row_for = [&](const std::string& on) -> const ManifestRow* {
    for (const auto& row : table)
      if (row.device == on && contains(row.architectures, folder.architecture()) &&
          contains(row.quantizations, quantization))
        return &row;
    return nullptr;
  };
  auto none_handles = [&](const std::string& on) {
    return Status(ErrorCode::unsupported,
                  fmt::format("{}: no plugin in this build handles {} with {} on {} (the built-in manifest table: {})",
                              folder.source, folder.architecture(), quantization == "none" ? "unquantized weights" : quantization,
                              on, describe_table(table)));
  };
  ManifestChoice choice;
  if (device == "cpu" || device == "cuda") {
    choice.row = row_for(device);
    if (!choice.row) return none_handles(device);
    if (Status s = probe_plugin(registry, choice.row->model_plugin, Role::model, device_named(device)); !s)
      return Status(s.code(), fmt::format("--device {}: manifest {}: {}", device, choice.row->manifest, s.message()));
    return choice;
  }
  // auto: a GPU when the CUDA row's own model plugin can run there.
  if (const ManifestRow* cuda = row_for("cuda")) {
    Status probed = probe_plugin(registry, cuda->model_plugin, Role::model, device_named("cuda"));
    if (probed) {
      choice.row = cuda;
      return choice;
    }
    choice.note = probed.message();
  }
  choice.row = row_for("cpu");
  if (!choice.row) {
    if (!choice.note.empty()) return Status(ErrorCode::unsupported, choice.note);
    return none_handles("cpu or cuda");
  }
  return choice;
}

}  // namespace hostrun::core
