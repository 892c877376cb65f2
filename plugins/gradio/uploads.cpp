#include "uploads.hpp"

#include <fmt/format.h>

namespace hostrun::gradio {

UploadStore::UploadStore(UploadLimits limits) : limits_(limits) {}

void UploadStore::drop_expired(std::chrono::steady_clock::time_point now) {
  for (auto it = files_.begin(); it != files_.end();) {
    if (it->second.expires <= now) {
      total_bytes_ -= it->second.bytes.size();
      it = files_.erase(it);
    } else {
      ++it;
    }
  }
}

Result<std::string> UploadStore::put(std::string_view bytes, std::string_view file_name) {
  if (bytes.size() > limits_.max_file_bytes)
    return Status(ErrorCode::resource_exhausted,
                  fmt::format("the file has {} bytes; uploads are limited to {} bytes each", bytes.size(),
                              limits_.max_file_bytes));
  // The name is the client's; only its safe characters reach the path.
  std::string name;
  for (char c : file_name.substr(0, 64))
    name += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_') ? c : '_';
  if (name.empty() || name.find_first_not_of('.') == std::string::npos) name = "file";
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  drop_expired(now);
  if (total_bytes_ + bytes.size() > limits_.max_total_bytes)
    return Status(ErrorCode::resource_exhausted,
                  fmt::format("the server keeps at most {} bytes of uploads at once; try again later",
                              limits_.max_total_bytes));
  const std::string path = fmt::format("/hostrun-upload/{:016x}{:016x}/{}", random_(), random_(), name);
  File& file = files_[path];
  file.bytes.assign(reinterpret_cast<const uint8_t*>(bytes.data()),
                    reinterpret_cast<const uint8_t*>(bytes.data()) + bytes.size());
  file.expires = now + limits_.keep_for;
  total_bytes_ += bytes.size();
  return path;
}

std::optional<std::vector<uint8_t>> UploadStore::get(const std::string& path) {
  std::lock_guard lock(mutex_);
  drop_expired(std::chrono::steady_clock::now());
  auto it = files_.find(path);
  if (it == files_.end()) return std::nullopt;
  return it->second.bytes;
}

size_t UploadStore::bytes_kept() {
  std::lock_guard lock(mutex_);
  return total_bytes_;
}

}  // namespace hostrun::gradio
