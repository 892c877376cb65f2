// A read-only memory map of one whole file (internal to hostrun::checkpoint).
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>
#include <string>

namespace hostrun::checkpoint {

class MappedFile {
 public:
  MappedFile() = default;
  // Throws hostrun::Error (not_found, io_error) naming the path.
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  // The whole file. Empty for an empty file (mmap cannot map zero bytes).
  std::span<const std::byte> bytes() const noexcept { return {base_, size_}; }

 private:
  void release() noexcept;

  const std::byte* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace hostrun::checkpoint
