// An HF model directory as a hostrun::WeightSource.
//
// Weights come from model.safetensors, or, when that is absent, from the
// shards named by model.safetensors.index.json (the order HF transformers
// uses). Every file is memory-mapped and its header validated at open(); the
// index is checked against the shards (each tensor it names is in the file it
// says, no tensor is in two files), so later lookups cannot fail except for
// names the checkpoint does not have.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/safetensors.hpp"
#include "hostrun/weights.hpp"

namespace hostrun::checkpoint {

inline constexpr std::string_view kSingleFileName = "model.safetensors";
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr std::string_view kConfigFileName = "config.json";
inline constexpr std::string_view kGenerationConfigFileName = "generation_config.json";

class ModelDirectory final : public WeightSource {
 public:
  static Result<std::unique_ptr<ModelDirectory>> open(const std::filesystem::path& directory) noexcept;

  std::string directory() const noexcept override { return directory_.string(); }
  std::string config_json() const noexcept override { return config_json_; }
  // Sorted by name.
  std::vector<std::string> tensor_names() const noexcept override;
  Result<TensorView> tensor(std::string_view name) const noexcept override;
  // A small file of the folder: a plain name (no '/', not '.' or '..'), a
  // regular file once links are followed (HF cache snapshots are links into
  // the cache's blobs), at most 64 MiB.
  Result<std::string> read_file(std::string_view name) const noexcept override;

  // The validated header entry of a tensor, and the file that holds it.
  const TensorEntry* entry(std::string_view name) const noexcept;
  const SafetensorsFile* file_of(std::string_view name) const noexcept;
  const std::vector<SafetensorsFile>& files() const noexcept { return files_; }
  bool sharded() const noexcept { return sharded_; }
  // Sum of all tensors' bytes (what an index calls total_size).
  uint64_t total_tensor_bytes() const noexcept { return total_bytes_; }

 private:
  struct Location {
    size_t file = 0;
    const TensorEntry* entry = nullptr;
  };
  ModelDirectory() = default;

  std::filesystem::path directory_;
  std::string config_json_;
  bool sharded_ = false;
  uint64_t total_bytes_ = 0;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, Location, std::less<>> tensors_;
};

}  // namespace hostrun::checkpoint
