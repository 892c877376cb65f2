// What a plugin accepts from a manifest, and the validated values it receives.
//
// A plugin declares its settings as a table of SettingSpec; the host validates
// each manifest table against it (unknown key, wrong type, missing required key
// are errors naming file, line and key) and hands the plugin a Settings object
// holding exactly the declared keys, defaults filled in. The plugin never sees
// TOML, so the manifest format can change without touching any plugin.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "hostrun/status.hpp"

namespace hostrun {

enum class SettingType : uint8_t { boolean, integer, number, string, string_list };

constexpr std::string_view setting_type_name(SettingType t) noexcept {
  switch (t) {
    case SettingType::boolean: return "boolean";
    case SettingType::integer: return "integer";
    case SettingType::number: return "number";
    case SettingType::string: return "string";
    case SettingType::string_list: return "array of strings";
  }
  return "?";
}

using SettingValue = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;

// One key a plugin accepts. Plain data with static storage so that a
// descriptor can point at a constexpr array of them.
struct SettingSpec {
  const char* key;
  SettingType type;
  const char* help;
  bool required = false;
  // Default as TOML text ("0.8", "true", "\"llama3\"", "[]"); nullptr = no default.
  const char* default_toml = nullptr;
  // For integer/number: inclusive bounds checked by the host.
  double min = -1e300;
  double max = 1e300;
  // For a string that names a file or folder: resolved against the manifest's folder.
  bool is_path = false;
};

class Settings {
 public:
  void set(std::string key, SettingValue value) { values_[std::move(key)] = std::move(value); }
  bool has(std::string_view key) const { return values_.find(key) != values_.end(); }
  const std::map<std::string, SettingValue, std::less<>>& values() const noexcept { return values_; }

  // Typed reads. A missing key or another type throws hostrun::Error; the host
  // validated the table, so inside a plugin this only signals a plugin bug.
  bool get_bool(std::string_view key) const { return get<bool>(key); }
  int64_t get_int(std::string_view key) const { return get<int64_t>(key); }
  double get_number(std::string_view key) const {
    auto it = find(key);
    if (auto* i = std::get_if<int64_t>(&it->second)) return double(*i);
    return get<double>(key);
  }
  const std::string& get_string(std::string_view key) const { return get<std::string>(key); }
  const std::vector<std::string>& get_strings(std::string_view key) const {
    return get<std::vector<std::string>>(key);
  }

 private:
  using Map = std::map<std::string, SettingValue, std::less<>>;
  Map::const_iterator find(std::string_view key) const {
    auto it = values_.find(key);
    if (it == values_.end()) throw Error(ErrorCode::not_found, "setting '" + std::string(key) + "' is not set");
    return it;
  }
  template <typename T>
  const T& get(std::string_view key) const {
    auto it = find(key);
    if (auto* v = std::get_if<T>(&it->second)) return *v;
    throw Error(ErrorCode::invalid_argument, "setting '" + std::string(key) + "' has another type");
  }
  Map values_;
};

}  // namespace hostrun
