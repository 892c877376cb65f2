// A new HF model folder, written tensor by tensor: the WeightSink a quantizer
// fills for `hostrun lite`.
//
// Tensors are buffered until a shard is full (`shard_bytes`), then written
// as one safetensors file (metadata {"format": "pt"}, as transformers writes
// and expects). finish() names the shards as save_pretrained does:
// model.safetensors when one holds everything, else
// model-0000i-of-0000N.safetensors with model.safetensors.index.json
// (metadata.total_size and the weight_map). Until finish() the shards carry
// temporary names, so a folder is never mistaken for complete; the caller
// writes into a staging folder and renames it into place.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "hostrun/weights.hpp"

namespace hostrun::checkpoint {

class FolderWriter final : public WeightSink {
 public:
  static constexpr uint64_t kDefaultShardBytes = uint64_t(2) << 30;

  // `directory` must exist and be empty.
  static Result<std::unique_ptr<FolderWriter>> create(const std::filesystem::path& directory,
                                                      uint64_t shard_bytes = kDefaultShardBytes) noexcept;

  std::string directory() const noexcept override { return directory_.string(); }
  // A name written twice, a non-contiguous or device view, or a dtype
  // safetensors cannot hold is invalid_argument; nothing after finish().
  Status add_tensor(std::string_view name, const TensorView& tensor) noexcept override;
  // A plain file name (no '/', not '.', '..' or a weights file's name).
  Status write_file(std::string_view name, std::string_view bytes) noexcept override;
  Status finish() noexcept override;

  uint64_t tensor_bytes() const noexcept;  // data bytes added so far

 private:
  struct Pending {
    std::string name;
    DType dtype = DType::f32;
    std::vector<int64_t> shape;
    std::vector<std::byte> bytes;
  };
  explicit FolderWriter(std::filesystem::path directory, uint64_t shard_bytes)
      : directory_(std::move(directory)), shard_bytes_(shard_bytes) {}
  Status flush_shard();  // with mutex_ held

  std::filesystem::path directory_;
  uint64_t shard_bytes_ = 0;
  mutable std::mutex mutex_;
  std::vector<Pending> pending_;
  uint64_t pending_bytes_ = 0;
  uint64_t total_bytes_ = 0;
  std::vector<std::filesystem::path> shards_;  // temporary names, in order
  std::map<std::string, size_t, std::less<>> shard_of_;  // every tensor added -> index into shards_ (pending: the next)
  bool finished_ = false;
};

}  // namespace hostrun::checkpoint
