// RFC 2397 data: URLs with base64 payloads, as OpenAI clients send images
// ("data:image/png;base64,iVBOR..."): the one form of image the servers take
// from a request body. Strict: a payload that is not canonical base64 is an
// error, never silently truncated.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <hostrun/status.hpp>

namespace hostrun::http {

struct DataUrl {
  std::string media_type;  // lower-cased, parameters dropped ("image/png"); "" when the URL gives none
  std::vector<uint8_t> bytes;
};

// RFC 4648 base64 (the standard alphabet, '=' padding optional at the end);
// invalid_argument naming the offset of the first bad character.
Result<std::vector<uint8_t>> decode_base64(std::string_view text);

// "data:[<media type>][;<parameter>]*;base64,<payload>". invalid_argument
// for anything else (including data: URLs without ;base64) and
// resource_exhausted when the payload would decode to more than max_bytes.
Result<DataUrl> parse_data_url(std::string_view url, size_t max_bytes);

}  // namespace hostrun::http
