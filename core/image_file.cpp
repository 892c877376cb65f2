#include "image_file.hpp"

#include <fmt/format.h>

#include <cstring>
#include <fstream>
#include <iterator>

namespace hostrun::core {

Result<ImageData> read_image_file(const std::string& path) noexcept {
  try {
    constexpr std::streamoff kMaxBytes = std::streamoff(64) << 20;
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return Status(ErrorCode::not_found, fmt::format("{}: cannot open the file", path));
    if (in.tellg() > kMaxBytes) return Status(ErrorCode::invalid_argument, fmt::format("{}: larger than 64 MiB", path));
    in.seekg(0);
    ImageData image;
    image.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    const auto starts = [&](size_t at, std::string_view magic) {
      return image.bytes.size() >= at + magic.size() && std::memcmp(image.bytes.data() + at, magic.data(), magic.size()) == 0;
    };
    // The signatures the vision encoders decode; the encoder checks the rest.
    if (starts(0, "\x89PNG\r\n\x1a\n")) image.mime_type = "image/png";
    else if (starts(0, "\xff\xd8\xff")) image.mime_type = "image/jpeg";
    else if (starts(0, "RIFF") && starts(8, "WEBP")) image.mime_type = "image/webp";
    else if (starts(0, "GIF87a") || starts(0, "GIF89a")) image.mime_type = "image/gif";
    else return Status(ErrorCode::invalid_argument, fmt::format("{}: not a PNG, JPEG, WebP or GIF image", path));
    return image;
  } catch (const std::exception& e) {
    return Status(ErrorCode::internal, fmt::format("{}: {}", path, e.what()));
  }
}

}  // namespace hostrun::core
