// Helpers shared by the checkpoint sources (internal to hostrun::checkpoint).
//
// Inside this library errors are thrown as hostrun::Error so deep validation
// code stays readable; every public function converts them to a Status or
// Result at its edge (capture / to_result below), so nothing throws out.
#pragma once

#include <cstdint>
#include <filesystem>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"

namespace hostrun::checkpoint::detail {

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

template <typename T, typename Body>
Result<T> to_result(Body&& body) noexcept {
  return guard_result<T>(std::forward<Body>(body));
}

// A tensor or key name as it appears in an error: quoted, and cut short so a
// hostile 100 MB name cannot turn into a 100 MB message.
std::string quote_name(std::string_view name);

// "[8, 16]"
std::string shape_text(std::span<const int64_t> shape);

// The safetensors spelling of a dtype ("BF16"); nullopt for the packed 4-bit
// types, which safetensors cannot hold.
std::optional<std::string_view> safetensors_dtype_name(DType dtype) noexcept;
std::optional<DType> dtype_from_safetensors(std::string_view name) noexcept;
// Bytes per element for the dtypes safetensors can hold.
inline uint64_t element_bytes(DType dtype) noexcept { return dtype_bits(dtype) / 8; }

// Reads a small text file (config.json and friends) whole; throws not_found
// when it is absent and corrupt_data when it is larger than `max_bytes`.
std::string read_text_file(const std::filesystem::path& path, uint64_t max_bytes = 64ull << 20);

// Writes `text` to `path` through a temporary file and a rename, so a reader
// never sees half a file.
void write_text_file(const std::filesystem::path& path, std::string_view text);

}  // namespace hostrun::checkpoint::detail
