// The safetensors writer. The header is computed from the specs before any
// data exists, so tensors can be produced and written one piece at a time
// (pwrite at known offsets) and a Llama-3-8B checkpoint never has to be in
// memory at once.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <numeric>
#include <set>

#include <nlohmann/json.hpp>

#include "checkpoint/detail.hpp"
#include "checkpoint/safetensors.hpp"

namespace hostrun::checkpoint {

using detail::fail;
using detail::quote_name;
using detail::shape_text;

namespace {

void write_all(int fd, const std::byte* data, uint64_t size, uint64_t offset, const std::string& label) {
  while (size > 0) {
    // Linux moves at most ~2 GiB per call; larger pieces loop.
    size_t chunk = size_t(std::min<uint64_t>(size, 1u << 30));
    ssize_t n = ::pwrite(fd, data, chunk, off_t(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(ErrorCode::io_error, "{}: write of {} bytes at offset {} failed: {}", label, chunk, offset,
           std::strerror(errno));
    }
    data += n;
    size -= uint64_t(n);
    offset += uint64_t(n);
  }
}

uint64_t spec_bytes(const TensorSpec& spec, const std::string& label) {
  if (spec.name.empty() || spec.name == "__metadata__")
    fail(ErrorCode::invalid_argument, "{}: tensor name {} is reserved or empty", label, quote_name(spec.name));
  if (!detail::safetensors_dtype_name(spec.dtype))
    fail(ErrorCode::unsupported, "{}: tensor {}: dtype {} cannot be stored in safetensors (pack it into I32/U8)",
         label, quote_name(spec.name), dtype_name(spec.dtype));
  if (spec.shape.size() > kMaxTensorRank)
    fail(ErrorCode::invalid_argument, "{}: tensor {}: shape {} has more than {} dimensions", label,
         quote_name(spec.name), shape_text(spec.shape), kMaxTensorRank);
  uint64_t bytes = detail::element_bytes(spec.dtype);
  for (int64_t d : spec.shape) {
    if (d < 0)
      fail(ErrorCode::invalid_argument, "{}: tensor {}: shape {} has a negative dimension", label,
           quote_name(spec.name), shape_text(spec.shape));
    if (__builtin_mul_overflow(bytes, uint64_t(d), &bytes))
      fail(ErrorCode::invalid_argument, "{}: tensor {}: shape {} needs more than 2^64 bytes", label,
           quote_name(spec.name), shape_text(spec.shape));
  }
  return bytes;
}

}  // namespace

Result<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::create(
    const std::filesystem::path& path, std::vector<TensorSpec> specs,
    const std::map<std::string, std::string>& metadata) noexcept {
  return detail::to_result<std::unique_ptr<SafetensorsWriter>>([&] {
    const std::string label = path.string();
    std::unique_ptr<SafetensorsWriter> writer(new SafetensorsWriter());
    writer->path_ = path;

    std::vector<uint64_t> sizes;
    std::set<std::string_view> names;
    for (const auto& spec : specs) {
      sizes.push_back(spec_bytes(spec, label));
      if (!names.insert(spec.name).second)
        fail(ErrorCode::invalid_argument, "{}: tensor {} is given twice", label, quote_name(spec.name));
    }
    // Widest elements first (stable, so the caller's order holds within a
    // width): the data section starts 8-aligned, so every tensor lands
    // aligned to its element size with no padding between tensors.
    std::vector<size_t> order(specs.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return detail::element_bytes(specs[a].dtype) > detail::element_bytes(specs[b].dtype);
    });

    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::vector<uint64_t> begins(specs.size());
    uint64_t offset = 0;
    for (size_t i : order) {
      begins[i] = offset;
      if (__builtin_add_overflow(offset, sizes[i], &offset))
        fail(ErrorCode::invalid_argument, "{}: tensors add up to more than 2^64 bytes", label);
      header[specs[i].name] = {{"dtype", *detail::safetensors_dtype_name(specs[i].dtype)},
                               {"shape", specs[i].shape},
                               {"data_offsets", {begins[i], offset}}};
    }
    std::string text = header.dump();
    // The format wants the data section 8-aligned; spaces are the padding it allows.
    text.append((8 - text.size() % 8) % 8, ' ');
    if (text.size() > kMaxHeaderBytes)
      fail(ErrorCode::invalid_argument, "{}: header would be {} bytes, over the {}-byte limit readers enforce",
           label, text.size(), kMaxHeaderBytes);
    const uint64_t data_start = 8 + text.size();
    writer->file_size_ = data_start + offset;
    for (size_t i = 0; i < specs.size(); ++i)
      writer->slots_.emplace(specs[i].name, Slot{data_start + begins[i], sizes[i], 0});

    writer->temp_path_ = path;
    writer->temp_path_ += ".tmp";
    writer->fd_ = ::open(writer->temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (writer->fd_ < 0)
      fail(ErrorCode::io_error, "{}: cannot create: {}", writer->temp_path_.string(), std::strerror(errno));
    std::byte length[8];
    for (int b = 0; b < 8; ++b) length[b] = std::byte((text.size() >> (8 * b)) & 0xff);
    write_all(writer->fd_, length, 8, 0, label);
    write_all(writer->fd_, reinterpret_cast<const std::byte*>(text.data()), text.size(), 8, label);
    // Sized up front: pieces may arrive in any tensor order.
    if (::ftruncate(writer->fd_, off_t(writer->file_size_)) != 0)
      fail(ErrorCode::io_error, "{}: cannot size the file to {} bytes: {}", label, writer->file_size_,
           std::strerror(errno));
    return writer;
  });
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_ && !temp_path_.empty()) {
    std::error_code ec;
    std::filesystem::remove(temp_path_, ec);
  }
}

Status SafetensorsWriter::append(std::string_view name, std::span<const std::byte> bytes) noexcept {
  return guard([&] {
    const std::string label = path_.string();
    if (fd_ < 0) fail(ErrorCode::invalid_argument, "{}: append after finish", label);
    auto it = slots_.find(name);
    if (it == slots_.end())
      fail(ErrorCode::invalid_argument, "{}: tensor {} was not declared when the writer was created", label,
           quote_name(name));
    Slot& slot = it->second;
    if (bytes.size() > slot.nbytes - slot.written)
      fail(ErrorCode::invalid_argument, "{}: tensor {}: {} more bytes would exceed its {} (already has {})",
           label, quote_name(name), bytes.size(), slot.nbytes, slot.written);
    write_all(fd_, bytes.data(), bytes.size(), slot.file_offset + slot.written, label);
    slot.written += bytes.size();
  });
}

Status SafetensorsWriter::finish() noexcept {
  return guard([&] {
    const std::string label = path_.string();
    if (fd_ < 0) fail(ErrorCode::invalid_argument, "{}: finish called twice", label);
    for (const auto& [name, slot] : slots_)
      if (slot.written != slot.nbytes)
        fail(ErrorCode::invalid_argument, "{}: tensor {} has {} of its {} bytes", label, quote_name(name),
             slot.written, slot.nbytes);
    // No fsync: these files are fixtures and benchmark inputs that can be
    // regenerated; the rename still keeps readers from seeing half a file.
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail(ErrorCode::io_error, "{}: close failed: {}", label, std::strerror(errno));
    std::error_code ec;
    std::filesystem::rename(temp_path_, path_, ec);
    if (ec) fail(ErrorCode::io_error, "{}: cannot rename into place: {}", label, ec.message());
    finished_ = true;
  });
}

Status write_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                         const std::map<std::string, std::string>& metadata) noexcept {
  return guard([&]() -> Status {
    std::vector<TensorSpec> specs;
    specs.reserve(tensors.size());
    for (const auto& t : tensors) {
      TensorSpec spec{t.name, t.dtype, t.shape};
      uint64_t expected = spec_bytes(spec, path.string());
      if (t.bytes.size() != expected)
        fail(ErrorCode::invalid_argument, "{}: tensor {}: {} bytes given but shape {} of {} needs {}",
             path.string(), quote_name(t.name), t.bytes.size(), shape_text(t.shape), dtype_name(t.dtype), expected);
      specs.push_back(std::move(spec));
    }
    auto writer = SafetensorsWriter::create(path, std::move(specs), metadata);
    if (!writer) return writer.status();
    for (const auto& t : tensors)
      if (Status s = (*writer)->append(t.name, t.bytes); !s) return s;
    return (*writer)->finish();
  });
}

}  // namespace hostrun::checkpoint
