// Reading and writing safetensors files.
//
// Format: an 8-byte little-endian header length N, N bytes of JSON (an object
// mapping tensor names to {"dtype", "shape", "data_offsets": [begin, end]},
// plus an optional "__metadata__" object of strings), then the data section;
// offsets are relative to the start of the data section.
//
// The reader validates the whole header before it exposes a single byte; see
// README.md for the list of checks. Every error names the file and, where one
// is involved, the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/mapped_file.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"

namespace hostrun::checkpoint {

// Headers above this are refused before any JSON is parsed (the same cap as
// the reference Rust implementation): a real header is a few hundred KB.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// One validated header entry.
struct TensorEntry {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  uint64_t data_begin = 0;  // relative to the data section
  uint64_t data_end = 0;
  uint64_t nbytes() const noexcept { return data_end - data_begin; }
};

class SafetensorsFile {
 public:
  // Memory-maps `path` read-only and validates its header. The views it hands
  // out live as long as this object (moving it keeps them valid).
  static Result<SafetensorsFile> open(const std::filesystem::path& path) noexcept;
  // Validates `bytes` as a whole safetensors file without copying it; the
  // caller keeps `bytes` alive. `label` names the file in errors.
  static Result<SafetensorsFile> from_bytes(std::span<const std::byte> bytes, std::string label) noexcept;

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;

  // The path (or label) used in errors.
  const std::string& label() const noexcept { return label_; }
  uint64_t file_size() const noexcept { return bytes_.size(); }
  // Entries sorted by name.
  const std::vector<TensorEntry>& entries() const noexcept { return entries_; }
  const TensorEntry* find(std::string_view name) const noexcept;
  const std::map<std::string, std::string>& metadata() const noexcept { return metadata_; }

  // A read-only, contiguous, host-memory view of one entry of this file.
  TensorView view(const TensorEntry& entry) const noexcept;
  // not_found naming the tensor and the file when absent.
  Result<TensorView> tensor(std::string_view name) const noexcept;

 private:
  SafetensorsFile() = default;
  void parse();  // throws hostrun::Error

  std::string label_;
  MappedFile mapping_;  // empty for from_bytes
  std::span<const std::byte> bytes_;
  const std::byte* data_section_ = nullptr;
  std::vector<TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
  // Tensors whose offset is not a multiple of their element size are copied
  // once into aligned memory, so no consumer ever reads a misaligned float.
  std::map<std::string, std::unique_ptr<std::byte[]>, std::less<>> aligned_copies_;
};

// ---- writing ---------------------------------------------------------------

// What a tensor will be, before its bytes exist.
struct TensorSpec {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
};

// A tensor and its bytes (contiguous, row-major, little-endian).
struct TensorData {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;
};

// Writes a file in one go. The bytes of each tensor must match its shape and
// dtype exactly. Data is laid out largest element size first, so every tensor
// is aligned to its element size and the data section has no holes (both are
// what the reference implementation produces and accepts).
Status write_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                         const std::map<std::string, std::string>& metadata = {}) noexcept;

// Writes a file whose tensors are produced one at a time, for checkpoints too
// large to hold in memory. The header is fixed by the specs given to create();
// each tensor's bytes are then appended in order (in as many pieces as
// wanted), tensors in any order. finish() checks that every tensor is complete
// and renames the temporary file into place; a writer destroyed before
// finish() removes it.
class SafetensorsWriter {
 public:
  static Result<std::unique_ptr<SafetensorsWriter>> create(
      const std::filesystem::path& path, std::vector<TensorSpec> specs,
      const std::map<std::string, std::string>& metadata = {}) noexcept;
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  Status append(std::string_view name, std::span<const std::byte> bytes) noexcept;
  Status finish() noexcept;
  // Total size the file will have.
  uint64_t file_size() const noexcept { return file_size_; }

 private:
  struct Slot {
    uint64_t file_offset = 0;  // where the tensor's bytes start in the file
    uint64_t nbytes = 0;
    uint64_t written = 0;
  };
  SafetensorsWriter() = default;

  std::filesystem::path path_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  bool finished_ = false;
  uint64_t file_size_ = 0;
  std::map<std::string, Slot, std::less<>> slots_;
};

}  // namespace hostrun::checkpoint
