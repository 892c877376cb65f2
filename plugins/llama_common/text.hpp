// How names and shapes appear in this library's error messages (internal).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace hostrun::llama {

// A tensor or key name, quoted and cut short, so a hostile 100 MB name in a
// config cannot turn into a 100 MB message.
inline std::string quote_name(std::string_view name) {
  constexpr size_t kMaxShown = 200;
  if (name.size() <= kMaxShown) return fmt::format("'{}'", name);
  return fmt::format("'{}...' ({} bytes)", name.substr(0, kMaxShown), name.size());
}

// "[8, 16]"
inline std::string shape_text(std::span<const int64_t> shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace hostrun::llama
