// What the host reads of a model folder's config.json: only the fields every
// HF folder has, whatever the model family, to choose the manifest that runs
// it. Each plugin parses the rest itself (the host knows no model family).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/status.hpp"

namespace hostrun::checkpoint {

struct FolderConfig {
  std::string source;                      // DIR/config.json, for messages
  std::vector<std::string> architectures;  // "LlamaForCausalLM", "LlavaForConditionalGeneration"
  std::string model_type;                  // "llama", "llava"
  // quantization_config.quant_method ("awq", "fp8"), lowercased; "" when the
  // weights are not quantized. Looked for at the top and, for composite
  // models, in text_config.
  std::string quant_method;
  bool has_text_config = false;    // composite (vision-language) folders nest
  bool has_vision_config = false;  // their parts' configs
  std::string text_model_type;     // text_config.model_type, when given

  // The architecture the manifest table is keyed by: the first listed.
  const std::string& architecture() const { return architectures.front(); }
  std::string quantization() const { return quant_method.empty() ? "none" : quant_method; }
};

// Errors name the file and the key; a config without a non-empty
// `architectures` list is invalid_argument (the host cannot choose a manifest).
Result<FolderConfig> parse_folder_config(std::string_view json_text, std::string_view source) noexcept;
Result<FolderConfig> read_folder_config(const std::filesystem::path& directory) noexcept;

}  // namespace hostrun::checkpoint
