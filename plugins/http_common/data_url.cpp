#include "data_url.hpp"

#include <array>
#include <string>

namespace hostrun::http {

namespace {

constexpr std::array<int8_t, 256> decode_table() {
  std::array<int8_t, 256> table{};
  for (auto& v : table) v = -1;
  constexpr std::string_view alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (size_t i = 0; i < alphabet.size(); ++i) table[uint8_t(alphabet[i])] = int8_t(i);
  return table;
}
constexpr std::array<int8_t, 256> kDecode = decode_table();

char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

}  // namespace

Result<std::vector<uint8_t>> decode_base64(std::string_view text) {
  size_t length = text.size();
  size_t padding = 0;
  while (length > 0 && text[length - 1] == '=' && padding < 2) {
    --length;
    ++padding;
  }
  if (length % 4 == 1 || (padding > 0 && (length + padding) % 4 != 0))
    return Status(ErrorCode::invalid_argument,
                  "base64 payload has a length no encoder writes (" + std::to_string(text.size()) + " characters)");
  std::vector<uint8_t> out;
  out.reserve(length / 4 * 3 + 2);
  uint32_t bits = 0;
  int held = 0;
  for (size_t i = 0; i < length; ++i) {
    const int8_t value = kDecode[uint8_t(text[i])];
    if (value < 0)
      return Status(ErrorCode::invalid_argument,
                    "base64 payload has a character outside the alphabet at offset " + std::to_string(i));
    bits = (bits << 6) | uint32_t(value);
    held += 6;
    if (held >= 8) {
      held -= 8;
      out.push_back(uint8_t(bits >> held));
    }
  }
  // The bits left over must be zero, as every encoder writes them.
  if ((bits & ((1u << held) - 1)) != 0)
    return Status(ErrorCode::invalid_argument, "base64 payload does not end as an encoder ends it (stray bits)");
  return out;
}

Result<DataUrl> parse_data_url(std::string_view url, size_t max_bytes) {
  constexpr std::string_view scheme = "data:";
  if (url.size() < scheme.size() || lower(url[0]) != 'd' || lower(url[1]) != 'a' || lower(url[2]) != 't' ||
      lower(url[3]) != 'a' || url[4] != ':')
    return Status(ErrorCode::invalid_argument, "not a data: URL");
  const size_t comma = url.find(',');
  if (comma == std::string_view::npos) return Status(ErrorCode::invalid_argument, "a data: URL without a ',' before its payload");
  std::string header;
  for (char c : url.substr(scheme.size(), comma - scheme.size())) header += lower(c);
  if (!header.ends_with(";base64"))
    return Status(ErrorCode::invalid_argument, "only base64 data: URLs are taken (\"data:image/png;base64,...\")");
  header.resize(header.size() - 7);
  DataUrl out;
  out.media_type = header.substr(0, header.find(';'));
  const std::string_view payload = url.substr(comma + 1);
  if (payload.size() / 4 * 3 > max_bytes + 2)
    return Status(ErrorCode::resource_exhausted,
                  "the data: URL's payload is over the limit of " + std::to_string(max_bytes) + " bytes");
  auto bytes = decode_base64(payload);
  if (!bytes) return bytes.status();
  if (bytes->size() > max_bytes)
    return Status(ErrorCode::resource_exhausted,
                  "the data: URL's payload is over the limit of " + std::to_string(max_bytes) + " bytes");
  out.bytes = std::move(bytes).value();
  return out;
}

}  // namespace hostrun::http
