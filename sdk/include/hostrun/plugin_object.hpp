// The base of every object a plugin makes.
#pragma once

namespace hostrun {

// Objects are created inside a plugin library and destroyed through this
// virtual destructor, so the code that frees them is the plugin's own. The
// host wraps each one in a handle that keeps the library loaded until after
// the destructor has run (core/plugin_loader.hpp).
class PluginObject {
 public:
  PluginObject() = default;
  PluginObject(const PluginObject&) = delete;
  PluginObject& operator=(const PluginObject&) = delete;
  virtual ~PluginObject() = default;
};

}  // namespace hostrun
