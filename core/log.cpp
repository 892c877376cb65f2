#include "log.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <string>

namespace hostrun::core {

void StderrLogSink::write(LogLevel level, std::string_view source, std::string_view message) noexcept {
  if (level < level_) return;
  static constexpr const char* kNames[] = {"trace", "debug", "info", "warning", "error", "off"};
  std::lock_guard lock(mutex_);
  std::fprintf(stderr, "[%s] %.*s: %.*s\n", kNames[int(level)], int(source.size()), source.data(),
               int(message.size()), message.data());
}

std::optional<LogLevel> parse_log_level(std::string_view text) {
  std::string lower(text);
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  if (lower == "trace") return LogLevel::trace;
  if (lower == "debug") return LogLevel::debug;
  if (lower == "info") return LogLevel::info;
  if (lower == "warning" || lower == "warn") return LogLevel::warning;
  if (lower == "error") return LogLevel::error;
  if (lower == "off" || lower == "critical") return LogLevel::off;
  return std::nullopt;
}

StderrLogSink& process_log_sink() {
  static StderrLogSink sink;
  return sink;
}

}  // namespace hostrun::core
