#include "rtn_awq.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "checkpoint/model_directory.hpp"
#include "checkpoint/safetensors.hpp"
#include "ref/awq.hpp"
#include "ref/dtype.hpp"

namespace hostrun::llama {

namespace {

namespace fs = std::filesystem;

// The projections AutoAWQ quantizes in a Llama: every linear layer of a
// decoder layer. Embeddings, norms and the LM head stay as they are.
bool is_quantized_linear(const std::string& name) {
  static const std::regex linear(R"(model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight)");
  return std::regex_match(name, linear);
}

std::vector<float> as_f32(const TensorView& view) {
  std::vector<float> values(size_t(view.numel()));
  const ref::DType stored = view.dtype == DType::bf16 ? ref::DType::bf16
                            : view.dtype == DType::f16 ? ref::DType::f16
                                                       : ref::DType::f32;
  ref::convert_to_f32(view.data, stored, values.size(), values.data());
  return values;
}

struct Output {
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  void add(std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t bytes) {
    storage.emplace_back(bytes);
    std::memcpy(storage.back().data(), data, bytes);
    tensors.push_back({std::move(name), dtype, std::move(shape), std::span<const std::byte>(storage.back())});
  }
};

Status copy_small_files(const fs::path& source, const fs::path& destination) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "special_tokens_map.json"}) {
    if (!fs::exists(source / name)) continue;
    std::error_code ec;
    fs::copy_file(source / name, destination / name, fs::copy_options::overwrite_existing, ec);
    if (ec)
      return Status(ErrorCode::io_error, fmt::format("{}: cannot copy into {}: {}", (source / name).string(),
                                                     destination.string(), ec.message()));
  }
  return {};
}

Status write_folder(const fs::path& directory, const Output& output, const std::string& config) {
  std::error_code ec;
  fs::create_directories(directory, ec);
  if (ec) return Status(ErrorCode::io_error, fmt::format("{}: cannot create: {}", directory.string(), ec.message()));
  if (Status s = checkpoint::write_safetensors(directory / "model.safetensors", output.tensors); !s) return s;
  std::ofstream(directory / "config.json") << config << "\n";
  return {};
}

}  // namespace

Status write_rtn_awq_checkpoint(const fs::path& source, const fs::path& destination,
                                const RtnAwqOptions& options) noexcept {
  try {
    const int64_t group = options.group_size;
    if (group != 32 && group != 64 && group != 128)
      return Status(ErrorCode::invalid_argument, fmt::format("--group-size {}: expected 32, 64 or 128", group));
    auto opened = checkpoint::ModelDirectory::open(source);
    if (!opened) return opened.status();
    const checkpoint::ModelDirectory& weights = *opened.value();
    nlohmann::ordered_json config = nlohmann::ordered_json::parse(weights.config_json());
    if (config.contains("quantization_config"))
      return Status(ErrorCode::invalid_argument,
                    fmt::format("{}: already quantized (config.json has a quantization_config)", source.string()));
    Output awq, twin;
    for (const std::string& name : weights.tensor_names()) {
      auto found = weights.tensor(name);
      if (!found) return found.status();
      const TensorView& view = found.value();
      if (!is_quantized_linear(name)) {
        awq.add(name, view.dtype, std::vector<int64_t>(view.shape.begin(), view.shape.begin() + view.rank), view.data, view.nbytes());
        if (!options.dequantized_twin.empty())
          twin.add(name, view.dtype, std::vector<int64_t>(view.shape.begin(), view.shape.begin() + view.rank), view.data,
                   view.nbytes());
        continue;
      }
      const int64_t out = view.shape[0], in = view.shape[1];
      if (view.rank != 2 || out % 8 != 0 || in % group != 0)
        return Status(ErrorCode::invalid_argument,
                      fmt::format("{}: '{}' is [{}, {}]: AWQ needs out_features a multiple of 8 and in_features a "
                                  "multiple of the group size {}",
                                  source.string(), name, out, in, group));
      const std::vector<float> w = as_f32(view);
      const int64_t groups = in / group;
      const ref::AwqPackedLayer packed = ref::awq_quantize_rtn_packed(w.data(), size_t(out), size_t(in), size_t(group));
      const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
      awq.add(prefix + ".qweight", DType::i32, {in, out / 8}, packed.qweight.data(), packed.qweight.size() * 4);
      awq.add(prefix + ".qzeros", DType::i32, {groups, out / 8}, packed.qzeros.data(), packed.qzeros.size() * 4);
      awq.add(prefix + ".scales", DType::f16, {groups, out}, packed.scales.data(), packed.scales.size() * 2);
      if (!options.dequantized_twin.empty()) {
        std::vector<float> dense(size_t(out * in));
        ref::awq_dequantize(packed.view(), dense.data());
        twin.add(name, DType::f32, {out, in}, dense.data(), dense.size() * 4);
      }
    }
    nlohmann::ordered_json quantized = config;
    quantized["quantization_config"] = {{"quant_method", "awq"}, {"bits", 4},           {"group_size", group},
                                        {"zero_point", true},    {"version", "gemm"}};
    if (Status s = write_folder(destination, awq, quantized.dump(2)); !s) return s;
    if (Status s = copy_small_files(source, destination); !s) return s;
    if (!options.dequantized_twin.empty()) {
      nlohmann::ordered_json dense = config;
      dense["torch_dtype"] = "float32";
      if (Status s = write_folder(options.dequantized_twin, twin, dense.dump(2)); !s) return s;
      if (Status s = copy_small_files(source, options.dequantized_twin); !s) return s;
    }
    return {};
  } catch (const std::exception& e) {
    return Status(ErrorCode::invalid_argument, fmt::format("rtn-awq {}: {}", source.string(), e.what()));
  }
}

}  // namespace hostrun::llama
