#include "checkpoint/model_directory.hpp"

#include <system_error>

#include <hostrun/json_bounds.hpp>
#include <nlohmann/json.hpp>

#include "checkpoint/detail.hpp"

namespace hostrun::checkpoint {

using detail::fail;
using detail::quote_name;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

bool is_file(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

// Shard names come from a file we do not trust: only plain names inside the
// directory are accepted, so an index cannot point at /etc/passwd or "../x".
void check_shard_name(const std::string& file, const std::string& tensor, const std::string& index_label) {
  if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
      file.find('\0') != std::string::npos)
    fail(ErrorCode::corrupt_data, "{}: weight_map: tensor {} names file {}; expected a file name inside the directory",
         index_label, quote_name(tensor), quote_name(file));
}

}  // namespace

Result<std::string> ModelDirectory::read_file(std::string_view name) const noexcept {
  return detail::to_result<std::string>([&] {
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
        name.find('\0') != std::string_view::npos)
      detail::fail(ErrorCode::invalid_argument, "{}: {} is not a plain file name of the folder", directory_.string(),
                   detail::quote_name(name));
    // Links are followed: an HF hub cache snapshot is a folder of links into
    // ../../blobs. What they name must be a regular file of bounded size (a
    // FIFO or /dev/zero would never end).
    const fs::path path = directory_ / std::string(name);
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(path, ec))) detail::fail(ErrorCode::not_found, "{}: no such file", path.string());
    return detail::read_text_file(path);
  });
}

Result<std::unique_ptr<ModelDirectory>> ModelDirectory::open(const fs::path& directory) noexcept {
  return detail::to_result<std::unique_ptr<ModelDirectory>>([&] {
    std::unique_ptr<ModelDirectory> dir(new ModelDirectory());
    dir->directory_ = directory;
    std::error_code ec;
    if (!fs::is_directory(directory, ec))
      fail(ErrorCode::not_found, "{}: not a directory", directory.string());
    dir->config_json_ = detail::read_text_file(directory / kConfigFileName);

    const fs::path single = directory / kSingleFileName;
    const fs::path index = directory / kIndexFileName;
    if (is_file(single)) {
      auto file = SafetensorsFile::open(single);
      if (!file) throw Error(file.status());
      dir->files_.push_back(std::move(file).value());
    } else if (is_file(index)) {
      dir->sharded_ = true;
      const std::string index_label = index.string();
      Result<json> parsed = parse_json_bounded<json>(detail::read_text_file(index), JsonLimits{}, index_label);
      if (!parsed) fail(ErrorCode::corrupt_data, "{}", parsed.status().message());
      const json& root = *parsed;
      if (!root.is_object()) fail(ErrorCode::corrupt_data, "{}: expected a JSON object", index_label);
      auto map_it = root.find("weight_map");
      if (map_it == root.end() || !map_it->is_object())
        fail(ErrorCode::corrupt_data, "{}: expected key 'weight_map' holding an object of tensor name -> file",
             index_label);
      // Shards in the order the index first names them (usually 1..N).
      std::map<std::string, size_t> shard_numbers;
      std::vector<std::pair<std::string, size_t>> claims;  // tensor -> shard number
      for (const auto& [tensor, file] : map_it->items()) {
        if (!file.is_string())
          fail(ErrorCode::corrupt_data, "{}: weight_map: tensor {} maps to a JSON {}; expected a file name",
               index_label, quote_name(tensor), file.type_name());
        const auto& name = file.get_ref<const std::string&>();
        check_shard_name(name, tensor, index_label);
        auto [it, added] = shard_numbers.emplace(name, shard_numbers.size());
        if (added) {
          if (!is_file(directory / name))
            fail(ErrorCode::not_found, "{}: weight_map: tensor {} is in {}, which does not exist", index_label,
                 quote_name(tensor), (directory / name).string());
        }
        claims.emplace_back(tensor, it->second);
      }
      if (shard_numbers.empty()) fail(ErrorCode::corrupt_data, "{}: weight_map is empty", index_label);
      std::vector<std::string> shard_names(shard_numbers.size());
      for (const auto& [name, number] : shard_numbers) shard_names[number] = name;
      for (const auto& name : shard_names) {
        auto file = SafetensorsFile::open(directory / name);
        if (!file) throw Error(file.status());
        dir->files_.push_back(std::move(file).value());
      }
      for (const auto& [tensor, number] : claims)
        if (dir->files_[number].find(tensor) == nullptr)
          fail(ErrorCode::corrupt_data, "{}: weight_map says tensor {} is in {}, but that file does not hold it",
               index_label, quote_name(tensor), dir->files_[number].label());
    } else {
      fail(ErrorCode::not_found, "{}: no {} or {}; expected a Hugging Face checkpoint directory",
           directory.string(), kSingleFileName, kIndexFileName);
    }

    // Every tensor of every file is exposed, including any the index forgot;
    // what must never happen is one name in two files.
    for (size_t f = 0; f < dir->files_.size(); ++f) {
      for (const auto& entry : dir->files_[f].entries()) {
        auto [it, added] = dir->tensors_.emplace(entry.name, Location{f, &entry});
        if (!added)
          fail(ErrorCode::corrupt_data, "{}: tensor {} is in both {} and {}", directory.string(), quote_name(entry.name),
               dir->files_[it->second.file].label(), dir->files_[f].label());
        dir->total_bytes_ += entry.nbytes();
      }
    }
    return dir;
  });
}

std::vector<std::string> ModelDirectory::tensor_names() const noexcept {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, location] : tensors_) names.push_back(name);
  return names;
}

Result<TensorView> ModelDirectory::tensor(std::string_view name) const noexcept {
  auto it = tensors_.find(name);
  if (it != tensors_.end()) return files_[it->second.file].view(*it->second.entry);
  return Status(ErrorCode::not_found,
                fmt::format("{}: checkpoint has no tensor {}", directory_.string(), quote_name(name)));
}

const TensorEntry* ModelDirectory::entry(std::string_view name) const noexcept {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second.entry;
}

const SafetensorsFile* ModelDirectory::file_of(std::string_view name) const noexcept {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &files_[it->second.file];
}

}  // namespace hostrun::checkpoint
