#include "manifest.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

namespace hostrun::core {

namespace fs = std::filesystem;

namespace {

constexpr Role kRoles[] = {Role::model,    Role::quantizer,      Role::kv_cache_policy,
                           Role::tokenizer, Role::vision_encoder, Role::frontend};

std::optional<Role> role_from_name(std::string_view name) {
  for (Role r : kRoles)
    if (name == role_name(r)) return r;
  return std::nullopt;
}

std::string role_list() {
  std::string out;
  for (Role r : kRoles) out += (out.empty() ? "" : ", ") + std::string(role_name(r));
  return out;
}

ValueOrigin origin_of(const toml::source_region& region, const std::string& file) {
  ValueOrigin o;
  o.file = file;
  o.line = int(region.begin.line);
  o.column = int(region.begin.column);
  return o;
}

// The TOML value as a setting value, when it can be one.
std::optional<SettingValue> to_setting_value(const toml::node& node) {
  if (auto v = node.as_boolean()) return SettingValue(v->get());
  if (auto v = node.as_integer()) return SettingValue(int64_t(v->get()));
  if (auto v = node.as_floating_point()) return SettingValue(double(v->get()));
  if (auto v = node.as_string()) return SettingValue(std::string(v->get()));
  if (auto arr = node.as_array()) {
    std::vector<std::string> items;
    for (const auto& item : *arr) {
      auto s = item.as_string();
      if (!s) return std::nullopt;
      items.emplace_back(s->get());
    }
    return SettingValue(std::move(items));
  }
  return std::nullopt;
}

std::string toml_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "table";
    case toml::node_type::array: return "array";
    case toml::node_type::string: return "string";
    case toml::node_type::integer: return "integer";
    case toml::node_type::floating_point: return "number";
    case toml::node_type::boolean: return "boolean";
    case toml::node_type::date: return "date";
    case toml::node_type::time: return "time";
    case toml::node_type::date_time: return "date-time";
    default: return "value";
  }
}

std::string value_type_name(const SettingValue& v) {
  switch (v.index()) {
    case 0: return "boolean";
    case 1: return "integer";
    case 2: return "number";
    case 3: return "string";
    default: return "array of strings";
  }
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// Converts a flag's text to the type the schema asks for.
std::optional<SettingValue> parse_flag_text(const std::string& text, SettingType type) {
  switch (type) {
    case SettingType::string: return SettingValue(text);
    case SettingType::boolean:
      if (text == "true" || text == "1" || text == "yes" || text == "on") return SettingValue(true);
      if (text == "false" || text == "0" || text == "no" || text == "off") return SettingValue(false);
      return std::nullopt;
    case SettingType::integer: {
      int64_t v = 0;
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
      return SettingValue(v);
    }
    case SettingType::number: {
      try {
        size_t used = 0;
        double v = std::stod(text, &used);
        if (used != text.size()) return std::nullopt;
        return SettingValue(v);
      } catch (...) {
        return std::nullopt;
      }
    }
    case SettingType::string_list: {
      std::vector<std::string> items;
      std::string_view rest = text;
      while (!rest.empty()) {
        size_t comma = rest.find(',');
        items.emplace_back(rest.substr(0, comma));
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      return SettingValue(std::move(items));
    }
  }
  return std::nullopt;
}


}  // namespace

std::optional<SettingValue> default_setting_value(const SettingSpec& spec) {
  if (!spec.default_toml) return std::nullopt;
  try {
    toml::table t = toml::parse(std::string("v = ") + spec.default_toml);
    if (auto* node = t.get("v")) return to_setting_value(*node);
  } catch (...) {
  }
  return std::nullopt;
}

std::string ValueOrigin::describe() const {
  if (!file.empty() && line > 0) return fmt::format("{}:{}:{}", file, line, column);
  if (!file.empty()) return file;
  return label.empty() ? "unknown" : label;
}

Result<Manifest> Manifest::parse_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return Status(ErrorCode::not_found, fmt::format("{}: cannot open the manifest", file.string()));
  std::stringstream text;
  text << in.rdbuf();
  std::error_code ec;
  fs::path dir = fs::absolute(file, ec).parent_path();
  return parse_string(text.str(), file.string(), dir);
}

Result<Manifest> Manifest::parse_string(std::string_view text, const std::string& source_name,
                                        const fs::path& base_dir) {
  toml::table root;
  try {
    root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{}:{}:{}: {}", source_name, e.source().begin.line, e.source().begin.column,
                              e.description()));
  }
  Manifest manifest;
  manifest.source_name_ = source_name;
  manifest.base_dir_ = base_dir;
  std::vector<std::string> problems;
  for (const auto& [key, node] : root) {
    ValueOrigin where = origin_of(key.source(), source_name);
    const toml::table* body = node.as_table();
    if (!body) {
      problems.push_back(fmt::format("{}: '{}' must be a table ([{}]) naming a role or a host section, found a {}",
                                     where.describe(), key.str(), key.str(), toml_type_name(node)));
      continue;
    }
    ManifestTable table;
    table.name = std::string(key.str());
    table.origin = where;
    table.role = role_from_name(table.name);
    for (const auto& [item_key, item] : *body) {
      ValueOrigin item_where = origin_of(item_key.source(), source_name);
      item_where.label = fmt::format("{}.{}", table.name, item_key.str());
      if (item_key.str() == "plugin" || item_key.str() == "role") {
        auto s = item.as_string();
        if (!s) {
          problems.push_back(fmt::format("{}: '{}.{}' must be a string, found a {}", item_where.describe(),
                                         table.name, item_key.str(), toml_type_name(item)));
          continue;
        }
        if (item_key.str() == "plugin") {
          table.plugin = s->get();
        } else {
          auto role = role_from_name(s->get());
          if (!role)
            problems.push_back(fmt::format("{}: '{}.role' is '{}', expected one of {}", item_where.describe(),
                                           table.name, s->get(), role_list()));
          else if (table.role && *table.role != *role)
            problems.push_back(fmt::format("{}: table [{}] is the {} role and cannot say role = '{}'",
                                           item_where.describe(), table.name, role_name(*table.role), s->get()));
          else
            table.role = role;
        }
        continue;
      }
      RawValue raw;
      raw.value = to_setting_value(item);
      raw.toml_type = toml_type_name(item);
      raw.origin = item_where;
      table.values[std::string(item_key.str())] = std::move(raw);
    }
    manifest.tables_.push_back(std::move(table));
  }
  if (!problems.empty()) {
    std::string joined;
    for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
    return Status(ErrorCode::invalid_argument, joined);
  }
  return manifest;
}

const ManifestTable* Manifest::table(std::string_view name) const noexcept {
  for (const auto& t : tables_)
    if (t.name == name) return &t;
  return nullptr;
}

Status Manifest::set_override(std::string_view dotted_key, std::string value_text, std::string label) {
  size_t dot = dotted_key.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == dotted_key.size())
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{}: '{}' is not of the form table.key", label, dotted_key));
  std::string table_name(dotted_key.substr(0, dot));
  std::string key(dotted_key.substr(dot + 1));
  auto it = std::find_if(tables_.begin(), tables_.end(), [&](const auto& t) { return t.name == table_name; });
  if (it == tables_.end()) {
    ManifestTable fresh;
    fresh.name = table_name;
    fresh.role = role_from_name(table_name);
    fresh.origin.label = label;
    tables_.push_back(std::move(fresh));
    it = std::prev(tables_.end());
  }
  if (key == "plugin") {
    it->plugin = std::move(value_text);
    return Status();
  }
  RawValue raw;
  raw.flag_text = std::move(value_text);
  raw.origin.label = std::move(label);
  it->values[key] = std::move(raw);
  return Status();
}

Settings validate_settings(std::span<const SettingSpec> schema, const std::map<std::string, RawValue>& values,
                           const std::string& table, const std::string& owner, const fs::path& base_dir,
                           std::map<std::string, ValueOrigin>& origins, std::vector<std::string>& problems) {
  Settings settings;
  for (const auto& [key, raw] : values) {
    auto spec = std::find_if(schema.begin(), schema.end(), [&](const SettingSpec& s) { return key == s.key; });
    if (spec == schema.end()) {
      std::string accepted, suggestion;
      size_t best = 3;
      for (const auto& s : schema) {
        accepted += (accepted.empty() ? "" : ", ") + std::string(s.key);
        size_t d = edit_distance(key, s.key);
        if (d < best) best = d, suggestion = s.key;
      }
      problems.push_back(fmt::format("{}: unknown key '{}' in [{}] ({} accepts: {}){}", raw.origin.describe(), key,
                                     table, owner, accepted.empty() ? "no settings" : accepted,
                                     suggestion.empty() ? "" : fmt::format("; did you mean '{}'?", suggestion)));
      continue;
    }
    std::optional<SettingValue> value;
    if (raw.flag_text) {
      value = parse_flag_text(*raw.flag_text, spec->type);
      if (!value) {
        problems.push_back(fmt::format("{}: '{}' is not a valid {} for {}.{}", raw.origin.describe(), *raw.flag_text,
                                       setting_type_name(spec->type), table, key));
        continue;
      }
    } else {
      value = raw.value;
      // An integer where a number is wanted is fine (TOML writes 1 for 1.0).
      if (value && spec->type == SettingType::number)
        if (auto* i = std::get_if<int64_t>(&*value)) value = SettingValue(double(*i));
      // An empty TOML array has no element type; it is an empty list.
      bool type_ok = value && value_type_name(*value) == setting_type_name(spec->type);
      if (!type_ok) {
        problems.push_back(fmt::format("{}: '{}.{}' must be a {}, found a {}", raw.origin.describe(), table, key,
                                       setting_type_name(spec->type),
                                       value ? value_type_name(*value) : raw.toml_type));
        continue;
      }
    }
    double numeric = 0;
    if (auto* i = std::get_if<int64_t>(&*value)) numeric = double(*i);
    if (auto* d = std::get_if<double>(&*value)) numeric = *d;
    if ((spec->type == SettingType::integer || spec->type == SettingType::number) &&
        (numeric < spec->min || numeric > spec->max)) {
      problems.push_back(fmt::format("{}: {}.{} = {} is out of range [{}, {}]", raw.origin.describe(), table, key,
                                     format_setting(*value), spec->min, spec->max));
      continue;
    }
    if (spec->is_path) {
      auto& text = std::get<std::string>(*value);
      // Paths in a manifest are relative to it; paths from flags to the working folder.
      if (!text.empty() && fs::path(text).is_relative() && !raw.flag_text && !base_dir.empty())
        text = (base_dir / text).lexically_normal().string();
    }
    settings.set(key, std::move(*value));
    origins[key] = raw.origin;
  }
  for (const auto& spec : schema) {
    if (settings.has(spec.key)) continue;
    if (auto fallback = default_setting_value(spec)) {
      settings.set(spec.key, std::move(*fallback));
      origins[spec.key].label = "default";
    } else if (spec.required) {
      problems.push_back(fmt::format("[{}]: missing required key '{}' ({}): {}", table, spec.key,
                                     setting_type_name(spec.type), spec.help ? spec.help : ""));
    }
  }
  return settings;
}

Result<ResolvedManifest> resolve(const Manifest& manifest, const PluginRegistry& registry,
                                 std::span<const HostTableSchema> host_tables) {
  ResolvedManifest resolved;
  std::vector<std::string> problems;
  for (const auto& table : manifest.tables()) {
    std::string where = table.origin.describe();
    auto host = std::find_if(host_tables.begin(), host_tables.end(), [&](const auto& h) { return h.name == table.name; });
    if (host != host_tables.end()) {
      ResolvedHostTable out;
      out.name = table.name;
      out.settings = validate_settings(host->settings, table.values, table.name, "hostrun", manifest.base_dir(),
                                       out.origins, problems);
      resolved.host_tables.push_back(std::move(out));
      continue;
    }
    if (!table.role) {
      std::string hosts;
      for (const auto& h : host_tables) hosts += ", " + h.name;
      problems.push_back(fmt::format("{}: unknown table [{}]: expected a role table ({}) or a host table ({})", where,
                                     table.name, role_list(), hosts.empty() ? "none" : hosts.substr(2)));
      continue;
    }
    if (table.plugin.empty()) {
      problems.push_back(fmt::format("{}: table [{}] has no 'plugin' key naming the {} plugin", where, table.name,
                                     role_name(*table.role)));
      continue;
    }
    const LoadedPlugin* plugin = registry.find(table.plugin);
    if (!plugin) {
      std::string known;
      for (const auto& p : registry.plugins())
        if (p.role(*table.role)) known += (known.empty() ? "" : ", ") + p.name;
      problems.push_back(fmt::format("{}: [{}] names plugin '{}', which was not found (plugins with the {} role: {})",
                                     where, table.name, table.plugin, role_name(*table.role),
                                     known.empty() ? "none" : known));
      continue;
    }
    const RoleEntry* entry = plugin->role(*table.role);
    if (!entry) {
      problems.push_back(fmt::format("{}: [{}] names plugin '{}', which has no {} role", where, table.name,
                                     table.plugin, role_name(*table.role)));
      continue;
    }
    // The host wires one object of each role, found by the role's own table
    // name; a second instance (a table with role = "...") would be validated
    // and then never used, so it is refused here.
    if (table.name != role_name(*table.role)) {
      problems.push_back(fmt::format("{}: table [{}] is a second {} instance; hostrun wires one of each role, in the "
                                     "table named after it ([{}])",
                                     where, table.name, role_name(*table.role), role_name(*table.role)));
      continue;
    }
    ResolvedInstance instance;
    instance.table = table.name;
    instance.role = *table.role;
    instance.plugin = plugin;
    instance.settings = validate_settings(std::span(entry->settings, entry->settings_count), table.values,
                                          table.name, fmt::format("plugin '{}'", plugin->name), manifest.base_dir(),
                                          instance.origins, problems);
    resolved.instances.push_back(std::move(instance));
  }
  if (!problems.empty()) {
    std::string joined;
    for (const auto& p : problems) joined += (joined.empty() ? "" : "\n") + p;
    return Status(ErrorCode::invalid_argument, joined);
  }
  return resolved;
}

const ResolvedInstance* ResolvedManifest::instance(std::string_view table) const noexcept {
  for (const auto& i : instances)
    if (i.table == table) return &i;
  return nullptr;
}

const ResolvedHostTable* ResolvedManifest::host_table(std::string_view name) const noexcept {
  for (const auto& h : host_tables)
    if (h.name == name) return &h;
  return nullptr;
}

std::string format_setting(const SettingValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return v ? "true" : "false";
        else if constexpr (std::is_same_v<T, int64_t>) return std::to_string(v);
        else if constexpr (std::is_same_v<T, double>) return fmt::format("{}", v);
        else if constexpr (std::is_same_v<T, std::string>) {
          std::ostringstream os;
          os << toml::value<std::string>(v);
          return os.str();
        } else {
          std::string out = "[";
          for (size_t i = 0; i < v.size(); ++i) {
            std::ostringstream os;
            os << toml::value<std::string>(v[i]);
            out += (i ? ", " : "") + os.str();
          }
          return out + "]";
        }
      },
      value);
}

}  // namespace hostrun::core
