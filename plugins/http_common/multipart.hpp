// multipart/form-data bodies (RFC 7578), as browsers and @gradio/client send
// file uploads. Strict and bounded: the body is already in memory (the
// server's body limit), parts are views into it, and anything malformed is an
// error naming what, never a partial result.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <hostrun/status.hpp>

namespace hostrun::http {

struct FormPart {
  std::string name;          // Content-Disposition's name
  std::string filename;      // its filename ("" when the part is a plain field)
  std::string content_type;  // the part's Content-Type ("" when absent)
  std::string_view data;     // into the body
};

// The boundary of a Content-Type header value
// ("multipart/form-data; boundary=..."), quoted or not; invalid_argument when
// the type is another or the boundary is missing or longer than RFC 2046's 70.
Result<std::string> multipart_boundary(std::string_view content_type);

// The parts of `body`, in order; at most max_parts (invalid_argument beyond).
Result<std::vector<FormPart>> parse_multipart(std::string_view body, std::string_view boundary, size_t max_parts = 64);

}  // namespace hostrun::http
