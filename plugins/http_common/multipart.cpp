#include "multipart.hpp"

#include <optional>

#include "ascii.hpp"

namespace hostrun::http {

namespace {

Status bad(std::string why) { return Status(ErrorCode::invalid_argument, "multipart body: " + std::move(why)); }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The value of `key` among "; key=value" parameters (quoted or not).
std::optional<std::string> parameter(std::string_view header, std::string_view key) {
  size_t at = 0;
  while ((at = header.find(';', at)) != std::string_view::npos) {
    std::string_view rest = trim(header.substr(at + 1));
    const size_t eq = rest.find('=');
    if (eq != std::string_view::npos && iequals(trim(rest.substr(0, eq)), key)) {
      std::string_view value = trim(rest.substr(eq + 1));
      if (!value.empty() && value.front() == '"') {
        std::string out;
        for (size_t i = 1; i < value.size(); ++i) {
          if (value[i] == '\\' && i + 1 < value.size()) out += value[++i];
          else if (value[i] == '"') return out;
          else out += value[i];
        }
        return std::nullopt;  // unterminated quote
      }
      return std::string(value.substr(0, value.find(';')));
    }
    ++at;
  }
  return std::nullopt;
}

}  // namespace

Result<std::string> multipart_boundary(std::string_view content_type) {
  const std::string_view type = trim(content_type.substr(0, content_type.find(';')));
  if (!iequals(type, "multipart/form-data"))
    return Status(ErrorCode::invalid_argument, "expected Content-Type multipart/form-data");
  std::optional<std::string> boundary = parameter(content_type, "boundary");
  if (!boundary || boundary->empty() || boundary->size() > 70)
    return Status(ErrorCode::invalid_argument, "multipart/form-data without a boundary of 1 to 70 characters");
  return *boundary;
}

Result<std::vector<FormPart>> parse_multipart(std::string_view body, std::string_view boundary, size_t max_parts) {
  const std::string delimiter = "--" + std::string(boundary);
  const std::string next = "\r\n" + delimiter;
  // The next CRLF--boundary from `from` that is a delimiter line: followed
  // by "--" (the last) or by optional padding and CRLF.
  const auto find_next = [&](size_t from) {
    for (size_t at = body.find(next, from); at != std::string_view::npos; at = body.find(next, at + 1)) {
      size_t after = at + next.size();
      if (body.substr(after).starts_with("--")) return at;
      while (after < body.size() && (body[after] == ' ' || body[after] == '\t')) ++after;
      if (body.substr(after).starts_with("\r\n")) return at;
    }
    return std::string_view::npos;
  };
  // The first delimiter may only be preceded by a preamble ending in CRLF.
  size_t at;
  if (body.starts_with(delimiter)) {
    at = delimiter.size();
  } else {
    const size_t found = find_next(0);
    if (found == std::string_view::npos) return bad("no boundary delimiter");
    at = found + next.size();
  }
  std::vector<FormPart> parts;
  for (;;) {
    if (body.substr(at).starts_with("--")) return parts;  // the close delimiter; an epilogue may follow
    // Transport padding (spaces) may follow a delimiter before its CRLF.
    while (at < body.size() && (body[at] == ' ' || body[at] == '\t')) ++at;
    if (!body.substr(at).starts_with("\r\n")) return bad("a delimiter not followed by CRLF");
    at += 2;
    if (parts.size() == max_parts) return bad("more than " + std::to_string(max_parts) + " parts");
    const size_t headers_end = body.find("\r\n\r\n", at);
    const size_t part_end = find_next(at);
    if (part_end == std::string_view::npos) return bad("a part without a closing delimiter");
    if (headers_end == std::string_view::npos || headers_end > part_end) return bad("a part without a blank line after its headers");
    FormPart part;
    bool disposition = false;
    std::string_view headers = body.substr(at, headers_end - at);
    while (!headers.empty()) {
      const size_t eol = headers.find("\r\n");
      const std::string_view line = headers.substr(0, eol);
      headers = eol == std::string_view::npos ? std::string_view() : headers.substr(eol + 2);
      const size_t colon = line.find(':');
      if (colon == std::string_view::npos) return bad("a part header without ':'");
      const std::string_view name = trim(line.substr(0, colon)), value = trim(line.substr(colon + 1));
      if (iequals(name, "content-disposition")) {
        if (!iequals(trim(value.substr(0, value.find(';'))), "form-data")) return bad("a part that is not form-data");
        std::optional<std::string> field = parameter(value, "name");
        if (!field) return bad("a part without a name");
        part.name = *field;
        part.filename = parameter(value, "filename").value_or("");
        disposition = true;
      } else if (iequals(name, "content-type")) {
        part.content_type = std::string(value);
      }
    }
    if (!disposition) return bad("a part without Content-Disposition");
    part.data = body.substr(headers_end + 4, part_end - headers_end - 4);
    parts.push_back(std::move(part));
    at = part_end + next.size();
  }
}

}  // namespace hostrun::http
