#include "checkpoint/detail.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <system_error>

#include <fmt/ranges.h>

namespace hostrun::checkpoint::detail {

std::string quote_name(std::string_view name) {
  constexpr size_t kMaxShown = 200;
  if (name.size() <= kMaxShown) return fmt::format("'{}'", name);
  return fmt::format("'{}...' ({} bytes)", name.substr(0, kMaxShown), name.size());
}

std::string shape_text(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::optional<std::string_view> safetensors_dtype_name(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::i8: return "I8";
    case DType::u8: return "U8";
    case DType::f8_e4m3: return "F8_E4M3";
    case DType::f8_e5m2: return "F8_E5M2";
    case DType::i4: case DType::u4: return std::nullopt;
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_safetensors(std::string_view name) noexcept {
  for (DType dtype : {DType::f32, DType::f16, DType::bf16, DType::i32, DType::i64, DType::i8, DType::u8,
                      DType::f8_e4m3, DType::f8_e5m2})
    if (safetensors_dtype_name(dtype) == name) return dtype;
  return std::nullopt;
}

std::string read_text_file(const std::filesystem::path& path, uint64_t max_bytes) {
  std::error_code ec;
  auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status))
    fail(ErrorCode::not_found, "{}: no such file", path.string());
  if (!std::filesystem::is_regular_file(status))
    fail(ErrorCode::invalid_argument, "{}: expected a regular file", path.string());
  uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) fail(ErrorCode::io_error, "{}: cannot read its size: {}", path.string(), ec.message());
  if (size > max_bytes)
    fail(ErrorCode::corrupt_data, "{}: {} bytes; expected at most {} for a JSON settings file", path.string(),
         size, max_bytes);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::io_error, "{}: cannot open: {}", path.string(), std::strerror(errno));
  std::string text(size, '\0');
  in.read(text.data(), std::streamsize(size));
  if (in.gcount() != std::streamsize(size))
    fail(ErrorCode::io_error, "{}: read {} of {} bytes", path.string(), in.gcount(), size);
  return text;
}

void write_text_file(const std::filesystem::path& path, std::string_view text) {
  auto temp = path;
  temp += ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) fail(ErrorCode::io_error, "{}: cannot create: {}", temp.string(), std::strerror(errno));
    out.write(text.data(), std::streamsize(text.size()));
    out.flush();
    if (!out) fail(ErrorCode::io_error, "{}: write failed", temp.string());
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    fail(ErrorCode::io_error, "{}: cannot rename into place: {}", path.string(), ec.message());
  }
}

}  // namespace hostrun::checkpoint::detail
