// ASCII case folding for header names and tokens, which HTTP compares
// case-insensitively (no locale: a Turkish locale must not change "I").
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

namespace hostrun::http {

inline char ascii_lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

inline std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

inline bool iequals(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

}  // namespace hostrun::http
