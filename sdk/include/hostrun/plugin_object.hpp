// The base of every object a plugin makes, and how such objects keep their
// library loaded.
//
// Boost.DLL's rule: code must not be unmapped while an object it made can
// still run it. The host therefore gives every factory a LibraryPin (a
// counted reference to the plugin's library, CreateContext::library); every
// object the plugin hands out later (a KV cache, a decoder, a linear layer)
// travels as a PluginPtr, whose deleter runs the object's destructor and only
// then lets go of the pin. The host's registry holds one pin per library
// until the process ends, and libraries are also mapped RTLD_NODELETE, so the
// pins are the second of two locks, not the only one.
#pragma once

#include <memory>
#include <utility>

namespace hostrun {

class PluginObject {
 public:
  PluginObject() = default;
  PluginObject(const PluginObject&) = delete;
  PluginObject& operator=(const PluginObject&) = delete;
  virtual ~PluginObject() = default;
};

// A counted reference to a loaded plugin library. The host makes them; a
// plugin only copies the one its CreateContext carries. An empty pin (the
// default) pins nothing: objects made outside any library (tests, a model's
// own internal objects) use it.
class LibraryPin {
 public:
  struct Ops {
    void (*retain)(void* library) noexcept;
    void (*release)(void* library) noexcept;
  };
  LibraryPin() = default;
  LibraryPin(void* library, const Ops* ops) noexcept : library_(library), ops_(ops) { retain(); }
  LibraryPin(const LibraryPin& other) noexcept : library_(other.library_), ops_(other.ops_) { retain(); }
  LibraryPin(LibraryPin&& other) noexcept
      : library_(std::exchange(other.library_, nullptr)), ops_(std::exchange(other.ops_, nullptr)) {}
  LibraryPin& operator=(LibraryPin other) noexcept {
    std::swap(library_, other.library_);
    std::swap(ops_, other.ops_);
    return *this;
  }
  ~LibraryPin() {
    if (ops_ && library_) ops_->release(library_);
  }
  explicit operator bool() const noexcept { return library_ != nullptr; }

 private:
  void retain() noexcept {
    if (ops_ && library_) ops_->retain(library_);
  }
  void* library_ = nullptr;
  const Ops* ops_ = nullptr;
};

// Deletes a plugin-made object, then releases its library: the release runs
// in the deleting caller's code, after the object's own (plugin) code returned.
struct PinnedDelete {
  LibraryPin pin;
  void operator()(PluginObject* object) noexcept {
    LibraryPin held = std::move(pin);
    delete object;
  }
};

// An object a plugin hands out, keeping that plugin's library loaded.
template <typename T>
using PluginPtr = std::unique_ptr<T, PinnedDelete>;

template <typename T, typename... Args>
PluginPtr<T> make_pinned(const LibraryPin& pin, Args&&... args) {
  return PluginPtr<T>(new T(std::forward<Args>(args)...), PinnedDelete{pin});
}

}  // namespace hostrun
