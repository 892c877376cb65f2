#include "rtn_awq.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <future>
#include <regex>
#include <string>
#include <thread>
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
    // Rounding is independent per tensor: waves of tensors run on all cores
    // (an 8B model has 224 projections; one core takes minutes), outputs are
    // added in the checkpoint's order.
    struct Rounded {
      ref::AwqPackedLayer packed;
      std::vector<float> dense;  // the twin's weights, when asked for
    };
    const std::vector<std::string> names = weights.tensor_names();
    const size_t workers = std::max<size_t>(1, std::min<size_t>(std::thread::hardware_concurrency(), 16));
    for (size_t begin = 0; begin < names.size(); begin += workers) {
      const size_t end = std::min(names.size(), begin + workers);
      std::vector<std::future<Rounded>> rounding(end - begin);
      std::vector<TensorView> views(end - begin);
      for (size_t i = begin; i < end; ++i) {
        auto found = weights.tensor(names[i]);
        if (!found) return found.status();
        const TensorView view = views[i - begin] = found.value();
        if (!is_quantized_linear(names[i])) continue;
        const int64_t out = view.shape[0], in = view.shape[1];
        if (view.rank != 2 || out % 8 != 0 || in % group != 0)
          return Status(ErrorCode::invalid_argument,
                        fmt::format("{}: '{}' is [{}, {}]: AWQ needs out_features a multiple of 8 and in_features a "
                                    "multiple of the group size {}",
                                    source.string(), names[i], out, in, group));
        const bool with_twin = !options.dequantized_twin.empty();
        rounding[i - begin] = std::async(std::launch::async, [view, out, in, group, with_twin] {
          const std::vector<float> w = as_f32(view);
          Rounded r{ref::awq_quantize_rtn_packed(w.data(), size_t(out), size_t(in), size_t(group)), {}};
          if (with_twin) {
            r.dense.resize(size_t(out * in));
            ref::awq_dequantize(r.packed.view(), r.dense.data());
          }
          return r;
        });
      }
      for (size_t i = begin; i < end; ++i) {
        const std::string& name = names[i];
        const TensorView& view = views[i - begin];
        const std::vector<int64_t> shape(view.shape.begin(), view.shape.begin() + view.rank);
        if (!is_quantized_linear(name)) {
          awq.add(name, view.dtype, shape, view.data, view.nbytes());
          if (!options.dequantized_twin.empty()) twin.add(name, view.dtype, shape, view.data, view.nbytes());
          continue;
        }
        const Rounded r = rounding[i - begin].get();
        const int64_t out = shape[0], in = shape[1], groups = in / group;
        const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
        awq.add(prefix + ".qweight", DType::i32, {in, out / 8}, r.packed.qweight.data(), r.packed.qweight.size() * 4);
        awq.add(prefix + ".qzeros", DType::i32, {groups, out / 8}, r.packed.qzeros.data(), r.packed.qzeros.size() * 4);
        awq.add(prefix + ".scales", DType::f16, {groups, out}, r.packed.scales.data(), r.packed.scales.size() * 2);
        if (!options.dequantized_twin.empty()) twin.add(name, DType::f32, {out, in}, r.dense.data(), r.dense.size() * 4);
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
