// Errors that cross the plugin boundary as values.
//
// No exception may cross between the host and a plugin: a plugin library can be
// built with another copy of the runtime, and an exception thrown from code that
// is later unloaded is undefined behaviour. Every fallible SDK call therefore
// returns a Status (or a Result<T>), and every interface method is noexcept so
// the compiler rejects an override that forgets it. Inside a plugin, use
// hostrun::guard() to turn a throwing body into a Status.
#pragma once

#include <exception>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace hostrun {

enum class ErrorCode : int {
  ok = 0,
  invalid_argument,   // the caller's input is wrong (bad settings, bad ids, bad text)
  not_found,          // a file, tensor, key or plugin does not exist
  io_error,           // a read or write failed
  corrupt_data,       // a file exists but its contents lie or are truncated
  unsupported,        // valid, but this plugin or device cannot do it
  out_of_memory,      // host or device memory ran out
  resource_exhausted, // a budget (KV blocks, session length, queue) is full
  cancelled,
  internal,           // a bug: an invariant broke
  // ABI 4: codes frontends used to guess from message text.
  context_length_exceeded,  // prompt (+ requested tokens) is longer than the session or the whole KV cache
  deadline_exceeded,        // a time limit ran out
  unavailable,              // the engine is stopping or cannot take work now; retrying later may succeed
  permission_denied,        // authenticated, or not, but not allowed
};

const char* to_string(ErrorCode code) noexcept;

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok() { return {}; }
  bool is_ok() const noexcept { return code_ == ErrorCode::ok; }
  explicit operator bool() const noexcept { return is_ok(); }
  ErrorCode code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorCode code_ = ErrorCode::ok;
  std::string message_;
};

inline Status error(ErrorCode code, std::string message) { return Status(code, std::move(message)); }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {
    if (std::get<Status>(state_).is_ok())
      state_ = Status(ErrorCode::internal, "Result built from an ok Status without a value");
  }

  bool has_value() const noexcept { return std::holds_alternative<T>(state_); }
  explicit operator bool() const noexcept { return has_value(); }
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  Status status() const { return has_value() ? Status() : std::get<Status>(state_); }

 private:
  std::variant<T, Status> state_;
};

// Thrown only inside one library (host or plugin) and converted at the edge.
class Error : public std::exception {
 public:
  Error(ErrorCode code, std::string message) : status_(code, std::move(message)) {}
  explicit Error(Status status) : status_(std::move(status)) {}
  const char* what() const noexcept override { return status_.message().c_str(); }
  const Status& status() const noexcept { return status_; }

 private:
  Status status_;
};

// The Status of the exception being handled; call only inside a catch block.
inline Status status_of_current_exception() noexcept {
  try {
    throw;
  } catch (const Error& e) {
    return e.status();
  } catch (const std::bad_alloc&) {
    return Status(ErrorCode::out_of_memory, "out of host memory");
  } catch (const std::exception& e) {
    return Status(ErrorCode::internal, e.what());
  } catch (...) {
    return Status(ErrorCode::internal, "unknown exception");
  }
}

// Runs `body` (returning void or Status) and turns anything it throws into a Status.
template <typename Body>
Status guard(Body&& body) noexcept {
  try {
    if constexpr (std::is_same_v<decltype(body()), void>) {
      body();
      return Status();
    } else {
      return body();
    }
  } catch (...) {
    return status_of_current_exception();
  }
}

// Runs `body` (returning T) and turns anything it throws into a Result<T>.
template <typename T, typename Body>
Result<T> guard_result(Body&& body) noexcept {
  try {
    return Result<T>(body());
  } catch (...) {
    return status_of_current_exception();
  }
}

inline const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::ok: return "ok";
    case ErrorCode::invalid_argument: return "invalid argument";
    case ErrorCode::not_found: return "not found";
    case ErrorCode::io_error: return "I/O error";
    case ErrorCode::corrupt_data: return "corrupt data";
    case ErrorCode::unsupported: return "unsupported";
    case ErrorCode::out_of_memory: return "out of memory";
    case ErrorCode::resource_exhausted: return "resource exhausted";
    case ErrorCode::cancelled: return "cancelled";
    case ErrorCode::internal: return "internal error";
    case ErrorCode::context_length_exceeded: return "context length exceeded";
    case ErrorCode::deadline_exceeded: return "deadline exceeded";
    case ErrorCode::unavailable: return "unavailable";
    case ErrorCode::permission_denied: return "permission denied";
  }
  return "unknown error";
}

}  // namespace hostrun
