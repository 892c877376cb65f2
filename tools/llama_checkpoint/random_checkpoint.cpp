// Randomly initialised Llama checkpoints, written tensor by tensor.
#include <bit>
#include <cmath>
#include <cstring>
#include <system_error>
#include <thread>
#include <algorithm>

#include <nlohmann/json.hpp>

#include "checkpoint/detail.hpp"
#include "checkpoint/model_directory.hpp"
#include "llama_common/llama_weights.hpp"
#include "random_checkpoint.hpp"

namespace hostrun::llama {

using checkpoint::SafetensorsWriter;
using checkpoint::TensorSpec;
using checkpoint::detail::fail;
namespace detail = checkpoint::detail;
namespace fs = std::filesystem;

namespace {

uint64_t splitmix64(uint64_t x) noexcept {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(std::string_view text) noexcept {
  uint64_t h = 0xCBF29CE484222325ull;
  for (char c : text) h = (h ^ uint8_t(c)) * 0x100000001B3ull;
  return h;
}

// Counter-based: element i is a pure function of (tensor key, i), so pieces
// can be generated in any size and order and still agree.
float normal_like(uint64_t tensor_key, uint64_t index, float std) noexcept {
  const uint64_t bits = splitmix64(tensor_key ^ (index * 0xD1B54A32D192ED03ull));
  // Irwin-Hall with four 16-bit uniforms, scaled to unit variance: close to a
  // normal within +-3.46 sigma, and integer-exact so every platform agrees.
  uint32_t sum = 0;
  for (int lane = 0; lane < 4; ++lane) sum += uint32_t((bits >> (16 * lane)) & 0xFFFF);
  const double uniform_sum = (double(sum) + 2.0) / 65536.0;  // four (k + 0.5) / 65536
  return float((uniform_sum - 2.0) * 1.7320508075688772 * std);
}

uint64_t tensor_key(uint64_t seed, std::string_view name) noexcept { return splitmix64(seed ^ fnv1a(name)); }

uint16_t to_bf16(float value) noexcept {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;  // NaN stays NaN
  bits += 0x7FFFu + ((bits >> 16) & 1u);                   // round to nearest even
  return uint16_t(bits >> 16);
}

uint16_t to_f16(float value) noexcept {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000u);
  const int exponent = int((bits >> 23) & 0xFF);
  uint32_t mantissa = bits & 0x7FFFFFu;
  if (exponent == 0xFF) return uint16_t(sign | 0x7C00u | (mantissa != 0 ? 0x200u : 0u));
  const int e = exponent - 127 + 15;
  if (e >= 31) return uint16_t(sign | 0x7C00u);
  if (e <= 0) {  // f16 subnormal (or zero)
    if (e < -10) return sign;
    mantissa |= 0x800000u;
    const int shift = 14 - e;
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return uint16_t(sign | half);
  }
  uint32_t half = uint32_t(sign) | (uint32_t(e) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // a carry rounds up into the exponent
  return uint16_t(half);
}

enum class Init { normal, ones, zeros };

Init init_for(std::string_view name) {
  if (name.ends_with(".bias")) return Init::zeros;
  // input_layernorm, post_attention_layernorm, model.norm; CLIP's pre_layrnorm, layer_norm1/2, post_layernorm
  if (name.ends_with("norm.weight") || name.ends_with("norm1.weight") || name.ends_with("norm2.weight"))
    return Init::ones;
  return Init::normal;
}

// `values` picks them: the same name, the same values.
void write_tensor(SafetensorsWriter& writer, const TensorSpec& spec, const TensorValues& values_from,
                  const RandomLlamaOptions& options) {
  uint64_t numel = 1;
  for (int64_t d : spec.shape) numel *= uint64_t(d);
  const Init init = init_for(spec.name);
  const uint64_t key = tensor_key(options.seed, values_from.name);
  const float std = float(options.init_std);
  const size_t element = size_t(dtype_bits(spec.dtype) / 8);
  constexpr uint64_t kPieceElements = 1u << 24;  // 32-64 MB per piece
  const size_t piece_elements = size_t(std::min(numel, kPieceElements));
  std::vector<float> values(piece_elements);
  std::vector<std::byte> piece(piece_elements * element);
  // Values are a pure function of (tensor, index), so a piece is cut into
  // slices generated on all cores (an 8B checkpoint is 8e9 values: ~1 min on
  // one core). Separate passes (generate, then convert) keep each loop
  // branch-free so the compiler vectorises them.
  const size_t workers = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 64);
  auto fill = [&](uint64_t start, size_t begin, size_t end) {
    if (init == Init::normal) {
      for (size_t i = begin; i < end; ++i) values[i] = normal_like(key, start + i, std);
    } else {
      std::fill(values.begin() + ptrdiff_t(begin), values.begin() + ptrdiff_t(end), init == Init::ones ? 1.0f : 0.0f);
    }
    for (size_t i = begin; i < end; ++i)
      if (start + i >= values_from.zero_from) values[i] = 0.0f;
    if (spec.dtype == DType::f32) {
      std::memcpy(piece.data() + begin * 4, values.data() + begin, (end - begin) * 4);
    } else {
      auto* out = reinterpret_cast<uint16_t*>(piece.data());
      if (spec.dtype == DType::bf16) {
        for (size_t i = begin; i < end; ++i) out[i] = to_bf16(values[i]);
      } else {
        for (size_t i = begin; i < end; ++i) out[i] = to_f16(values[i]);
      }
    }
  };
  for (uint64_t start = 0; start < numel; start += kPieceElements) {
    const size_t count = size_t(std::min(kPieceElements, numel - start));
    const size_t slices = count < (size_t(1) << 16) ? 1 : workers;
    std::vector<std::thread> threads;
    for (size_t w = 1; w < slices; ++w)
      threads.emplace_back(fill, start, count * w / slices, count * (w + 1) / slices);
    fill(start, 0, count / slices);
    for (auto& t : threads) t.join();
    if (Status s = writer.append(spec.name, std::span(piece.data(), count * element)); !s) throw Error(s);
  }
}

void remove_if_present(const fs::path& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) fail(ErrorCode::io_error, "{}: cannot remove the stale file: {}", path.string(), ec.message());
}

}  // namespace

float random_llama_value(uint64_t seed, std::string_view tensor_name, uint64_t index, double init_std) noexcept {
  return normal_like(tensor_key(seed, tensor_name), index, float(init_std));
}

void write_random_tensors(const fs::path& directory, std::vector<TensorSpec> specs, const RandomLlamaOptions& options,
                          const ValuesOf& values_of) {
  // Greedy shards in HF order, as transformers' save_pretrained does.
  std::vector<std::vector<TensorSpec>> shards(1);
  uint64_t shard_bytes = 0;
  uint64_t total_bytes = 0;
  for (auto& spec : specs) {
    uint64_t bytes = dtype_bits(spec.dtype) / 8;
    for (int64_t d : spec.shape) bytes *= uint64_t(d);  // bounded: validated config sizes are < 2^31
    if (!shards.back().empty() && shard_bytes + bytes > options.max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(std::move(spec));
    shard_bytes += bytes;
    total_bytes += bytes;
  }

  // Readers prefer model.safetensors over an index; neither may be left
  // over from an earlier checkpoint in this directory.
  remove_if_present(directory / checkpoint::kSingleFileName);
  remove_if_present(directory / checkpoint::kIndexFileName);
  // transformers refuses safetensors files without metadata format "pt".
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  nlohmann::json weight_map = nlohmann::json::object();
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file_name = shards.size() == 1
                                      ? std::string(checkpoint::kSingleFileName)
                                      : fmt::format("model-{:05}-of-{:05}.safetensors", k + 1, shards.size());
    auto writer = SafetensorsWriter::create(directory / file_name, shards[k], metadata);
    if (!writer) throw Error(writer.status());
    for (const auto& spec : shards[k]) {
      write_tensor(**writer, spec, values_of ? values_of(spec.name) : TensorValues{spec.name}, options);
      weight_map[spec.name] = file_name;
    }
    if (Status s = (*writer)->finish(); !s) throw Error(s);
  }
  if (shards.size() > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    detail::write_text_file(directory / checkpoint::kIndexFileName, index.dump(2) + "\n");
  }
}

void write_generation_config(const fs::path& directory, const LlamaConfig& config) {
  nlohmann::ordered_json generation;
  generation["bos_token_id"] = config.bos_token_id ? nlohmann::ordered_json(*config.bos_token_id) : nullptr;
  if (config.eos_token_ids.size() == 1) generation["eos_token_id"] = config.eos_token_ids.front();
  else if (!config.eos_token_ids.empty()) generation["eos_token_id"] = config.eos_token_ids;
  detail::write_text_file(directory / checkpoint::kGenerationConfigFileName, generation.dump(2) + "\n");
}

void check_random_options(const RandomLlamaOptions& options) {
  if (options.dtype != DType::f32 && options.dtype != DType::f16 && options.dtype != DType::bf16)
    fail(ErrorCode::invalid_argument, "random checkpoint: dtype {} given; expected f32, f16 or bf16",
         dtype_name(options.dtype));
  if (options.max_shard_bytes == 0) fail(ErrorCode::invalid_argument, "random checkpoint: max_shard_bytes must be positive");
  if (!(options.init_std >= 0) || !std::isfinite(options.init_std))
    fail(ErrorCode::invalid_argument, "random checkpoint: init_std {} given; expected a number >= 0", options.init_std);
}

Status write_random_llama_checkpoint(const fs::path& directory, const LlamaConfig& config_in,
                                     const RandomLlamaOptions& options) noexcept {
  return guard([&] {
    check_random_options(options);
    LlamaConfig config = config_in;
    config.torch_dtype = std::string(torch_dtype_name(options.dtype));
    config.quant_method.reset();  // the weights written here are never quantized
    const fs::path config_path = directory / checkpoint::kConfigFileName;
    if (Status s = validate_llama_config(config, config_path.string()); !s) throw Error(s);

    std::error_code ec;
    fs::create_directories(directory, ec);
    if (ec) fail(ErrorCode::io_error, "{}: cannot create the directory: {}", directory.string(), ec.message());
    detail::write_text_file(config_path, llama_config_to_json(config));
    if (options.write_generation_config) write_generation_config(directory, config);

    std::vector<TensorSpec> specs;
    for (auto& spec : llama_tensor_specs(config)) specs.push_back({std::move(spec.name), options.dtype, std::move(spec.shape)});
    write_random_tensors(directory, std::move(specs), options);
  });
}

}  // namespace hostrun::llama
