#include "split_regex.hpp"

#include <fmt/format.h>

namespace hostrun::hf {

namespace {

// Unicode White_Space (PropList.txt), which is what Oniguruma's and Rust
// regex's `\s` match: TAB..CR, SPACE, NEL, NBSP, OGHAM SPACE MARK, EN QUAD..HAIR
// SPACE, LINE and PARAGRAPH SEPARATOR, NARROW NBSP, MEDIUM MATHEMATICAL SPACE,
// IDEOGRAPHIC SPACE. (JavaScript's \s differs: it adds U+FEFF and lacks U+0085.)
constexpr std::string_view kWhiteSpaceItems =
    "\\x{9}-\\x{d}\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

std::string pcre2_error_text(int code) {
  PCRE2_UCHAR buffer[256];
  int n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? fmt::format("PCRE2 error {}", code) : std::string(reinterpret_cast<char*>(buffer), size_t(n));
}

}  // namespace

Result<std::string> translate_oniguruma_pattern(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 64);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\') {
      if (i + 1 >= pattern.size()) return Status(ErrorCode::invalid_argument, "the pattern ends with a lone backslash");
      char e = pattern[++i];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceItems) : fmt::format("[{}]", kWhiteSpaceItems);
      } else if (e == 'S') {
        if (in_class)
          return Status(ErrorCode::unsupported,
                        fmt::format("\\S inside a character class (at offset {}) cannot be translated", i - 1));
        out += fmt::format("[^{}]", kWhiteSpaceItems);
      } else {
        out += c;
        out += e;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      // POSIX class [:alpha:] inside a class: copy through its closing ':]'.
      size_t close = pattern.find(":]", i + 2);
      if (close == std::string_view::npos) return Status(ErrorCode::invalid_argument, "unterminated [: :] class");
      out.append(pattern.substr(i, close + 2 - i));
      i = close + 1;
      continue;
    }
    if (in_class && c == '[')
      return Status(ErrorCode::unsupported,
                    fmt::format("nested character class (Oniguruma set operation) at offset {}", i));
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  if (in_class) return Status(ErrorCode::invalid_argument, "unterminated character class");
  return out;
}

Result<std::unique_ptr<SplitRegex>> SplitRegex::compile(const std::string& pattern, const std::string& what) {
  std::unique_ptr<SplitRegex> regex(new SplitRegex());
  regex->pattern_ = pattern;
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // UTF: code points, not bytes. UCP: \d, \w, \b and POSIX classes use Unicode
  // properties, as Oniguruma's do for UTF-8 patterns.
  regex->code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                               &error_code, &error_offset, nullptr);
  if (!regex->code_)
    return Status(ErrorCode::invalid_argument, fmt::format("{}: PCRE2 cannot compile the pattern at offset {}: {}",
                                                           what, size_t(error_offset), pcre2_error_text(error_code)));
  // JIT makes matching several times faster; without it (a platform PCRE2 has
  // no JIT for) the interpreter gives the same answers, only slower.
  regex->jit_ = pcre2_jit_compile(regex->code_, PCRE2_JIT_COMPLETE) == 0;
  return regex;
}

SplitRegex::~SplitRegex() {
  if (code_) pcre2_code_free(code_);
}

Status SplitRegex::next_match(std::string_view text, size_t start, pcre2_match_data* data, bool& found,
                              size_t& begin, size_t& end) const {
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // The caller has validated the UTF-8, so PCRE2's own check (a full scan of
  // the subject on every call, quadratic over a long text) is skipped.
  int rc = jit_ ? pcre2_jit_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data, nullptr)
                : pcre2_match(code_, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data, nullptr);
  if (rc == PCRE2_ERROR_NOMATCH) {
    found = false;
    return Status();
  }
  if (rc < 0)
    return Status(ErrorCode::resource_exhausted,
                  fmt::format("pre-tokenizer regex failed at byte {} of a {}-byte text: {}", start, text.size(),
                              pcre2_error_text(rc)));
  PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
  found = true;
  begin = ovector[0];
  end = ovector[1];
  return Status();
}

}  // namespace hostrun::hf
