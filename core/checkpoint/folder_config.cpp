#include "checkpoint/folder_config.hpp"

#include <algorithm>
#include <cctype>

#include <hostrun/json_bounds.hpp>
#include <nlohmann/json.hpp>

#include "checkpoint/detail.hpp"
#include "checkpoint/model_directory.hpp"

namespace hostrun::checkpoint {

using detail::fail;
using nlohmann::json;

namespace {

const json* member(const json& object, std::string_view key) {
  auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string string_field(const json& object, std::string_view key, std::string_view where, std::string_view source) {
  const json* value = member(object, key);
  if (!value) return {};
  if (!value->is_string())
    fail(ErrorCode::invalid_argument, "{}: key '{}{}': expected a string, found a JSON {}", source, where, key,
         value->type_name());
  return value->get<std::string>();
}

// quantization_config.quant_method of `object`, lowercased ("" when absent).
std::string quant_method_of(const json& object, std::string_view where, std::string_view source) {
  const json* config = member(object, "quantization_config");
  if (!config) return {};
  if (!config->is_object())
    fail(ErrorCode::invalid_argument, "{}: key '{}quantization_config': expected an object, found a JSON {}", source,
         where, config->type_name());
  std::string method = string_field(*config, "quant_method", std::string(where) + "quantization_config.", source);
  if (method.empty())
    fail(ErrorCode::invalid_argument, "{}: key '{}quantization_config.quant_method': missing (\"awq\", \"fp8\", ...)",
         source, where);
  std::transform(method.begin(), method.end(), method.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return method;
}

FolderConfig parse(std::string_view text, std::string_view source) {
  Result<json> parsed = parse_json_bounded<json>(text, JsonLimits{}, source);
  if (!parsed) fail(ErrorCode::corrupt_data, "{}", parsed.status().message());
  const json& root = *parsed;
  if (!root.is_object()) fail(ErrorCode::corrupt_data, "{}: expected a JSON object, found a JSON {}", source, root.type_name());
  FolderConfig out;
  out.source = std::string(source);
  const json* architectures = member(root, "architectures");
  if (!architectures || !architectures->is_array() || architectures->empty())
    fail(ErrorCode::invalid_argument,
         "{}: key 'architectures': expected a non-empty list of class names (e.g. [\"LlamaForCausalLM\"]); the host "
         "chooses the plugins from it",
         source);
  for (const json& name : *architectures) {
    if (!name.is_string() || name.get_ref<const std::string&>().empty())
      fail(ErrorCode::invalid_argument, "{}: key 'architectures': expected non-empty strings", source);
    out.architectures.push_back(name.get<std::string>());
  }
  out.model_type = string_field(root, "model_type", "", source);
  out.quant_method = quant_method_of(root, "", source);
  if (const json* text_config = member(root, "text_config")) {
    if (!text_config->is_object())
      fail(ErrorCode::invalid_argument, "{}: key 'text_config': expected an object, found a JSON {}", source,
           text_config->type_name());
    out.has_text_config = true;
    out.text_model_type = string_field(*text_config, "model_type", "text_config.", source);
    if (out.quant_method.empty()) out.quant_method = quant_method_of(*text_config, "text_config.", source);
  }
  if (const json* vision_config = member(root, "vision_config")) {
    if (!vision_config->is_object())
      fail(ErrorCode::invalid_argument, "{}: key 'vision_config': expected an object, found a JSON {}", source,
           vision_config->type_name());
    out.has_vision_config = true;
  }
  return out;
}

}  // namespace

Result<FolderConfig> parse_folder_config(std::string_view json_text, std::string_view source) noexcept {
  return detail::to_result<FolderConfig>([&] { return parse(json_text, source); });
}

Result<FolderConfig> read_folder_config(const std::filesystem::path& directory) noexcept {
  return detail::to_result<FolderConfig>([&] {
    const auto path = directory / kConfigFileName;
    return parse(detail::read_text_file(path), path.string());
  });
}

}  // namespace hostrun::checkpoint
