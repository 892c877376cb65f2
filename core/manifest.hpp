// Manifests: TOML files that wire plugins together.
//
//   [tokenizer]              # a role table: model, quantizer, kv_cache, tokenizer, vision, frontend
//   plugin = "hf_tokenizer"  # which plugin fills the role
//   file = "tokenizer.json"  # the plugin's own settings, checked against what it declares
//
// The host wires exactly one object per role, from the table named after the
// role; any other table is a host table (e.g. [engine]), validated against its
// host schema the same way, or an error. Every error names the file, the line
// and the key.
// Command-line flags become overrides ("tokenizer.file" = "...") applied on top.
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "hostrun/plugin.hpp"
#include "plugin_loader.hpp"

namespace hostrun::core {

// Where a value came from, for errors and for `manifest check` output.
struct ValueOrigin {
  std::string file;  // manifest path, or "" when not from a file
  int line = 0;
  int column = 0;
  std::string label;  // "default", "--session-len", ...
  std::string describe() const;
};

// A value as written, before the schema of its table is known.
struct RawValue {
  // From a manifest: the TOML value, when its type is one a setting can have.
  std::optional<SettingValue> value;
  std::string toml_type;  // the TOML type's name, for "expected ..., found ..." errors
  // From a flag: the text, converted once the schema says which type it wants.
  std::optional<std::string> flag_text;
  ValueOrigin origin;
};

struct ManifestTable {
  std::string name;                    // table name in the file
  std::optional<Role> role;            // set for role tables
  std::string plugin;                  // the plugin key of a role table
  ValueOrigin origin;                  // where the table starts
  std::map<std::string, RawValue> values;  // every key but `plugin` and `role`
};

// A table of settings the host itself reads, e.g. [engine].
struct HostTableSchema {
  std::string name;
  std::span<const SettingSpec> settings;
};

class Manifest {
 public:
  static Result<Manifest> parse_file(const std::filesystem::path& file);
  static Result<Manifest> parse_string(std::string_view text, const std::string& source_name,
                                       const std::filesystem::path& base_dir);

  // "table.key" = value from a command-line flag (`label` names the flag).
  // A missing role table is created only if `plugin` is being set.
  Status set_override(std::string_view dotted_key, std::string value_text, std::string label);

  const std::vector<ManifestTable>& tables() const noexcept { return tables_; }
  const ManifestTable* table(std::string_view name) const noexcept;
  const std::string& source_name() const noexcept { return source_name_; }
  const std::filesystem::path& base_dir() const noexcept { return base_dir_; }

 private:
  std::string source_name_;
  std::filesystem::path base_dir_;  // relative paths in the file resolve against this
  std::vector<ManifestTable> tables_;
};

struct ResolvedValue {
  SettingValue value;
  ValueOrigin origin;
};

struct ResolvedInstance {
  std::string table;
  Role role;
  const LoadedPlugin* plugin = nullptr;
  Settings settings;
  std::map<std::string, ValueOrigin> origins;
};

struct ResolvedHostTable {
  std::string name;
  Settings settings;
  std::map<std::string, ValueOrigin> origins;
};

struct ResolvedManifest {
  std::vector<ResolvedInstance> instances;
  std::vector<ResolvedHostTable> host_tables;

  const ResolvedInstance* instance(std::string_view table) const noexcept;
  const ResolvedHostTable* host_table(std::string_view name) const noexcept;
};

// Checks every table against the plugin it names (or the host schema) and
// fills in defaults. Collects every problem, one per line, not only the first.
Result<ResolvedManifest> resolve(const Manifest& manifest, const PluginRegistry& registry,
                                 std::span<const HostTableSchema> host_tables = {});

// Validates one table's raw values against a schema (used by resolve, and by
// commands that build settings from flags alone). Problems are appended.
Settings validate_settings(std::span<const SettingSpec> schema, const std::map<std::string, RawValue>& values,
                           const std::string& table, const std::string& owner,
                           const std::filesystem::path& base_dir, std::map<std::string, ValueOrigin>& origins,
                           std::vector<std::string>& problems);

// TOML text of a setting value, as `manifest check` prints it.
std::string format_setting(const SettingValue& value);

// A setting's declared default (its TOML text parsed), or nothing when it has none.
std::optional<SettingValue> default_setting_value(const SettingSpec& spec);

}  // namespace hostrun::core
