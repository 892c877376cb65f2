// Helpers for the checkpoint tests: temporary directories and hand-made
// safetensors bytes.
#pragma once

#include "../support/temp_dir.hpp"

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <doctest/doctest.h>

#include "hostrun/status.hpp"

namespace checkpoint_test {

namespace fs = std::filesystem;

using TempDir = hostrun::test::TempDir;

inline std::vector<std::byte> bytes_of(std::string_view text) {
  std::vector<std::byte> out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

// A safetensors file from a literal header and `data_bytes` of data section
// (filled with a counting pattern); the header length is written as given
// (`declared_length`) or as the real header size.
inline std::vector<std::byte> make_file(std::string_view header, size_t data_bytes,
                                        std::optional<uint64_t> declared_length = std::nullopt) {
  const uint64_t length = declared_length.value_or(header.size());
  std::vector<std::byte> out(8 + header.size() + data_bytes);
  for (int b = 0; b < 8; ++b) out[b] = std::byte((length >> (8 * b)) & 0xff);
  std::memcpy(out.data() + 8, header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) out[8 + header.size() + i] = std::byte(i & 0xff);
  return out;
}

inline void write_file(const fs::path& path, std::span<const std::byte> bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  REQUIRE(out);
}

inline std::vector<std::byte> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> out(chars.size());
  std::memcpy(out.data(), chars.data(), chars.size());
  return out;
}

inline std::string read_text(const fs::path& path) {
  auto bytes = read_file(path);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

inline bool contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

// Checks that `status` failed with `code` and that its message names each
// of `parts`; prints the message when it does not.
inline void expect_error(const hostrun::Status& status, hostrun::ErrorCode code,
                         std::initializer_list<std::string_view> parts) {
  INFO("message: " << status.message());
  REQUIRE_FALSE(status.is_ok());
  CHECK(status.code() == code);
  for (auto part : parts) CHECK_MESSAGE(contains(status.message(), part), "expected to find: " << part);
}

}  // namespace checkpoint_test
