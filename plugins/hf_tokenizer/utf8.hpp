// UTF-8 helpers shared by encoding (input repair) and decoding (output repair).
//
// Ill-formed input is repaired the way Rust's String::from_utf8_lossy, Python's
// bytes.decode("utf-8", "replace") and the WHATWG TextDecoder all do it: each
// *maximal subpart* of an ill-formed sequence (Unicode 15, section 3.9, "U+FFFD
// substitution of maximal subparts") becomes one U+FFFD. Using the one rule for
// both directions is what makes streaming decode equal whole decode.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace hostrun::hf {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// How the bytes at `pos` start: a complete well-formed character (its length),
// a well-formed but unfinished prefix cut by the end of `bytes` (`incomplete`,
// `length` bytes long), or ill-formed (`length` = the maximal subpart, >= 1).
struct Utf8Step {
  enum Kind { complete, incomplete, ill_formed } kind;
  size_t length;
};
Utf8Step utf8_step(std::string_view bytes, size_t pos) noexcept;

// Length of the longest prefix of `bytes` that is well-formed UTF-8.
size_t utf8_valid_prefix(std::string_view bytes) noexcept;

// Appends `bytes` to `out` with every maximal subpart of an ill-formed sequence
// replaced by U+FFFD. With `hold_incomplete`, an unfinished but well-formed
// sequence at the very end is not written; its length is returned so that the
// caller can keep it for the next call. Otherwise it becomes U+FFFD and 0 is returned.
size_t append_utf8_lossy(std::string_view bytes, std::string& out, bool hold_incomplete);

}  // namespace hostrun::hf
