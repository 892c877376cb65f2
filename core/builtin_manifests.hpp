// The manifests in manifests/*.toml, compiled in.
#pragma once

#include <span>
#include <string_view>

namespace hostrun::core {

struct BuiltinManifest {
  std::string_view name;  // file name without .toml, e.g. "llama3-cpu"
  std::string_view text;
};

std::span<const BuiltinManifest> builtin_manifests();

}  // namespace hostrun::core
