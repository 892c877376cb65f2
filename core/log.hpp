// The host's log sink: lines to stderr, filtered by --log-level.
#pragma once

#include <mutex>
#include <optional>
#include <string_view>

#include "hostrun/log.hpp"

namespace hostrun::core {

class StderrLogSink final : public LogSink {
 public:
  explicit StderrLogSink(LogLevel level = LogLevel::warning) : level_(level) {}
  void write(LogLevel level, std::string_view source, std::string_view message) noexcept override;
  LogLevel level() const noexcept override { return level_; }
  void set_level(LogLevel level) noexcept { level_ = level; }

 private:
  std::mutex mutex_;  // lines from engine and frontend threads must not interleave
  LogLevel level_;
};

// "trace", "debug", "info", "warning" (or "warn"), "error", "off"; case-insensitive.
std::optional<LogLevel> parse_log_level(std::string_view text);

// One sink for the whole process.
StderrLogSink& process_log_sink();

}  // namespace hostrun::core
