#include "checkpoint/folder_writer.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstring>

#include "checkpoint/detail.hpp"
#include "checkpoint/model_directory.hpp"
#include "checkpoint/safetensors.hpp"

namespace hostrun::checkpoint {

namespace fs = std::filesystem;
using detail::fail;
using detail::quote_name;

Result<std::unique_ptr<FolderWriter>> FolderWriter::create(const fs::path& directory, uint64_t shard_bytes) noexcept {
  return detail::to_result<std::unique_ptr<FolderWriter>>([&] {
    std::error_code error;
    if (!fs::is_directory(directory, error))
      fail(ErrorCode::invalid_argument, "{}: not a folder (FolderWriter writes into an existing empty one)",
           directory.string());
    if (!fs::is_empty(directory, error) || error)
      fail(ErrorCode::invalid_argument, "{}: not empty (FolderWriter writes a new folder)", directory.string());
    if (shard_bytes == 0) fail(ErrorCode::invalid_argument, "FolderWriter: a shard size of 0 bytes");
    return std::unique_ptr<FolderWriter>(new FolderWriter(directory, shard_bytes));
  });
}

uint64_t FolderWriter::tensor_bytes() const noexcept {
  std::lock_guard lock(mutex_);
  return total_bytes_;
}

Status FolderWriter::add_tensor(std::string_view name, const TensorView& tensor) noexcept {
  return guard([&] {
    std::lock_guard lock(mutex_);
    const std::string where = directory_.string();
    if (finished_) fail(ErrorCode::invalid_argument, "{}: add_tensor({}) after finish()", where, quote_name(name));
    if (name.empty()) fail(ErrorCode::invalid_argument, "{}: add_tensor: an empty tensor name", where);
    if (shard_of_.count(name))
      fail(ErrorCode::invalid_argument, "{}: tensor {} written twice", where, quote_name(name));
    if (!detail::safetensors_dtype_name(tensor.dtype))
      fail(ErrorCode::invalid_argument, "{}: tensor {}: safetensors cannot hold {}", where, quote_name(name),
           dtype_name(tensor.dtype));
    if (tensor.device.kind != DeviceKind::cpu || !tensor.is_contiguous() || (tensor.data == nullptr && tensor.numel() > 0))
      fail(ErrorCode::invalid_argument, "{}: tensor {}: expected a contiguous view in host memory", where,
           quote_name(name));
    Pending p;
    p.name = std::string(name);
    p.dtype = tensor.dtype;
    p.shape.assign(tensor.shape.begin(), tensor.shape.begin() + tensor.rank);
    p.bytes.resize(tensor.nbytes());
    if (!p.bytes.empty()) std::memcpy(p.bytes.data(), tensor.data, p.bytes.size());
    // A shard holds at least one tensor; one larger than a shard gets its own.
    if (!pending_.empty() && pending_bytes_ + p.bytes.size() > shard_bytes_) if (Status s = flush_shard(); !s) throw Error(s);
    shard_of_[p.name] = shards_.size();  // the shard the pending tensors go to
    pending_bytes_ += p.bytes.size();
    total_bytes_ += p.bytes.size();
    pending_.push_back(std::move(p));
  });
}

Status FolderWriter::flush_shard() {
  if (pending_.empty()) return {};
  const fs::path path = directory_ / fmt::format(".shard-{:05}.safetensors.partial", shards_.size() + 1);
  std::vector<TensorData> data;
  data.reserve(pending_.size());
  for (const Pending& p : pending_) data.push_back({p.name, p.dtype, p.shape, p.bytes});
  if (Status s = write_safetensors(path, data, {{"format", "pt"}}); !s) return s;
  shards_.push_back(path);
  pending_.clear();
  pending_bytes_ = 0;
  return {};
}

Status FolderWriter::write_file(std::string_view name, std::string_view bytes) noexcept {
  return guard([&] {
    std::lock_guard lock(mutex_);
    if (finished_) fail(ErrorCode::invalid_argument, "{}: write_file({}) after finish()", directory_.string(), quote_name(name));
    const bool plain = !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos &&
                       name.find('\0') == std::string_view::npos;
    const bool weights = name == kSingleFileName || name == kIndexFileName ||
                         (name.size() > 12 && name.substr(name.size() - 12) == ".safetensors");
    if (!plain || weights)
      fail(ErrorCode::invalid_argument, "{}: write_file: {} is not a plain file name beside the weights",
           directory_.string(), quote_name(name));
    detail::write_text_file(directory_ / std::string(name), bytes);
  });
}

Status FolderWriter::finish() noexcept {
  return guard([&] {
    std::lock_guard lock(mutex_);
    if (finished_) fail(ErrorCode::invalid_argument, "{}: finish() called twice", directory_.string());
    if (Status s = flush_shard(); !s) throw Error(s);
    if (shards_.empty()) fail(ErrorCode::invalid_argument, "{}: finish() with no tensor written", directory_.string());
    std::vector<std::string> names;
    if (shards_.size() == 1) {
      names.emplace_back(kSingleFileName);
    } else {
      for (size_t i = 0; i < shards_.size(); ++i)
        names.push_back(fmt::format("model-{:05}-of-{:05}.safetensors", i + 1, shards_.size()));
    }
    for (size_t i = 0; i < shards_.size(); ++i) {
      std::error_code error;
      fs::rename(shards_[i], directory_ / names[i], error);
      if (error) fail(ErrorCode::io_error, "{}: naming shard {}: {}", directory_.string(), names[i], error.message());
    }
    if (shards_.size() > 1) {
      nlohmann::ordered_json index;
      index["metadata"]["total_size"] = total_bytes_;
      nlohmann::ordered_json map = nlohmann::ordered_json::object();
      for (const auto& [tensor, shard] : shard_of_) map[tensor] = names[shard];
      index["weight_map"] = std::move(map);
      detail::write_text_file(directory_ / std::string(kIndexFileName), index.dump(2) + "\n");
    }
    finished_ = true;
  });
}

}  // namespace hostrun::checkpoint
