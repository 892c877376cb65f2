// Checkpoints as plugins see them: read access to an HF folder (WeightSource),
// write access to a new one (WeightSink), and the scale tensors quantized
// formats keep beside their weights.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"

namespace hostrun {

// An HF model directory: config.json and safetensors (single or sharded). The
// host memory-maps the files and validates every header before a plugin sees a
// byte, so a view it returns is always inside its file.
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  virtual std::string directory() const noexcept = 0;
  virtual std::string config_json() const noexcept = 0;  // the text of config.json
  virtual std::vector<std::string> tensor_names() const noexcept = 0;
  // A host-memory view (read-only) of one tensor, in its stored dtype. A
  // missing name is ErrorCode::not_found naming the tensor and the directory.
  virtual Result<TensorView> tensor(std::string_view name) const noexcept = 0;
  // A small file of the folder by its plain name ("generation_config.json",
  // "preprocessor_config.json"): a regular file (links followed) of at most
  // 64 MiB, read whole. Absent: not_found; a path, a FIFO, a folder or a
  // larger file: invalid_argument / corrupt_data naming it. Plugins read the
  // folder through this, never through the file system.
  virtual Result<std::string> read_file(std::string_view name) const noexcept = 0;
};

// A new HF folder being written (a quantized checkpoint): safetensors shards
// with their index, and small files beside them. Made by the host.
class WeightSink {
 public:
  virtual ~WeightSink() = default;
  virtual std::string directory() const noexcept = 0;
  // Writes one tensor (a contiguous host view; copied before the call returns).
  virtual Status add_tensor(std::string_view name, const TensorView& tensor) noexcept = 0;
  // Writes a file beside the weights (config.json with its quantization_config, ...).
  virtual Status write_file(std::string_view name, std::string_view bytes) noexcept = 0;
  // Closes the last shard and writes the index; nothing is complete before.
  virtual Status finish() noexcept = 0;
};

// How a scale tensor applies to the [out_features, in_features] weight it
// belongs to.
enum class ScaleGranularity : uint8_t { per_tensor, per_channel };

struct WeightScale {
  std::string name;  // the tensor found
  TensorView values; // 1 value (per tensor) or out_features values (per output channel)
  ScaleGranularity granularity = ScaleGranularity::per_tensor;
};

// Finds the scale of the linear layer `prefix` ("model.layers.0.mlp.down_proj")
// by name: the first of `prefix.<suffix>` that exists, for each suffix in
// order (FP8 checkpoints write "weight_scale", some "weight_scale_inv"; an
// input's static scale is "input_scale"). A scale of one element is per
// tensor, one of out_features elements ([out] or [out, 1]) per channel;
// anything else, or a dtype that is not f32/bf16/f16, is corrupt_data naming
// the tensor. None found: not_found naming every name tried.
inline Result<WeightScale> find_weight_scale(const WeightSource& weights, std::string_view prefix,
                                             int64_t out_features,
                                             std::initializer_list<std::string_view> suffixes = {"weight_scale"}) {
  std::string tried;
  for (std::string_view suffix : suffixes) {
    std::string name = fmt::format("{}.{}", prefix, suffix);
    auto found = weights.tensor(name);
    if (!found) {
      if (found.status().code() != ErrorCode::not_found) return found.status();
      tried += (tried.empty() ? "" : ", ") + name;
      continue;
    }
    const TensorView& view = found.value();
    if (view.dtype != DType::f32 && view.dtype != DType::bf16 && view.dtype != DType::f16)
      return Status(ErrorCode::corrupt_data, fmt::format("{}: scale tensor '{}' is {}; expected f32, bf16 or f16",
                                                         weights.directory(), name, dtype_name(view.dtype)));
    WeightScale scale;
    scale.name = std::move(name);
    scale.values = view;
    const bool column = view.rank == 1 || (view.rank == 2 && view.shape[1] == 1);
    if (view.numel() == 1) {
      scale.granularity = ScaleGranularity::per_tensor;
    } else if (column && view.shape[0] == out_features) {
      scale.granularity = ScaleGranularity::per_channel;
    } else {
      std::string shape;
      for (uint8_t r = 0; r < view.rank; ++r) shape += (r ? ", " : "") + std::to_string(view.shape[r]);
      return Status(ErrorCode::corrupt_data,
                    fmt::format("{}: scale tensor '{}' has shape [{}]; expected one value or {} (one per output "
                                "channel)",
                                weights.directory(), scale.name, shape, out_features));
    }
    return scale;
  }
  return Status(ErrorCode::not_found,
                fmt::format("{}: no scale for '{}' (looked for {})", weights.directory(), prefix, tried));
}

}  // namespace hostrun
