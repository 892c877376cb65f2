// An image file as the engine takes it (ImageData): its bytes and the type
// its signature names. Used by the embedding API's load_image and by
// `hostrun bench ... --image`; decoding is the vision encoder's.
#pragma once

#include <string>

#include "hostrun/generation.hpp"
#include "hostrun/status.hpp"

namespace hostrun::core {

// not_found when the file cannot be read; invalid_argument when it is not a
// PNG, JPEG, WebP or GIF file (by signature) or is larger than 64 MiB.
Result<ImageData> read_image_file(const std::string& path) noexcept;

}  // namespace hostrun::core
