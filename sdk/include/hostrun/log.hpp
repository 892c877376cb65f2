// Logging through the host.
//
// A plugin formats its message with fmt on its own side and hands the host a
// finished string, so the host decides where lines go (stderr, the server's
// log level) and no formatting state crosses the boundary.
#pragma once

#include <fmt/format.h>

#include <string>
#include <string_view>
#include <utility>

namespace hostrun {

enum class LogLevel : int { trace = 0, debug, info, warning, error, off };

class LogSink {
 public:
  virtual ~LogSink() = default;
  virtual void write(LogLevel level, std::string_view source, std::string_view message) noexcept = 0;
  virtual LogLevel level() const noexcept = 0;
};

// A small handle a plugin keeps: who is speaking, and where lines go.
class Logger {
 public:
  Logger() = default;
  Logger(LogSink* sink, std::string source) : sink_(sink), source_(std::move(source)) {}

  bool enabled(LogLevel level) const noexcept { return sink_ && level >= sink_->level(); }

  template <typename... Args>
  void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) const noexcept {
    if (!enabled(level)) return;
    try {
      sink_->write(level, source_, fmt::format(format, std::forward<Args>(args)...));
    } catch (...) {
      // A failed format (out of memory) must not take the caller down.
    }
  }
  template <typename... Args>
  void debug(fmt::format_string<Args...> f, Args&&... a) const noexcept { log(LogLevel::debug, f, std::forward<Args>(a)...); }
  template <typename... Args>
  void info(fmt::format_string<Args...> f, Args&&... a) const noexcept { log(LogLevel::info, f, std::forward<Args>(a)...); }
  template <typename... Args>
  void warn(fmt::format_string<Args...> f, Args&&... a) const noexcept { log(LogLevel::warning, f, std::forward<Args>(a)...); }
  template <typename... Args>
  void error(fmt::format_string<Args...> f, Args&&... a) const noexcept { log(LogLevel::error, f, std::forward<Args>(a)...); }

 private:
  LogSink* sink_ = nullptr;
  std::string source_;
};

}  // namespace hostrun
