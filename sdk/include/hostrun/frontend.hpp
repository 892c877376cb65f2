// Role: Frontend — talks to people or programs through an engine handle.
#pragma once

#include "hostrun/engine.hpp"
#include "hostrun/plugin_object.hpp"
#include "hostrun/status.hpp"

namespace hostrun {

class Frontend : public PluginObject {
 public:
  // Serves until the user quits (terminal chat) or stop() is called (servers).
  virtual Status run(EngineHandle& engine) noexcept = 0;
  // Asks run() to return soon; safe from any thread (the host calls it on SIGINT/SIGTERM).
  virtual void stop() noexcept = 0;
};

}  // namespace hostrun
