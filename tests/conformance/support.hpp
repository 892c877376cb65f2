// What every conformance suite shares: finding the plugins as the host finds
// them, random values, and comparing against a reference.
#pragma once

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "hostrun/config.hpp"
#include "hostrun/tensor.hpp"
#include "plugin_loader.hpp"
#include "ref/dtype.hpp"

namespace conformance {

namespace fs = std::filesystem;

// A suite row's settings, as a manifest table would give them.
using SettingList = std::vector<std::pair<std::string, hostrun::SettingValue>>;

inline hostrun::Settings settings_of(const SettingList& list) {
  hostrun::Settings settings;
  for (const auto& [key, value] : list) settings.set(key, value);
  return settings;
}

// Every plugin the build made (HOSTRUN_PLUGIN_BUILD_DIR, or HOSTRUN_TEST_PLUGIN_DIR
// for a bundle carried to another machine), the test-only ones (tests/plugins:
// test_rtn_int8) and the suites' own (the example byte_tokenizer), scanned as
// the host scans --plugin-dir.
inline std::unique_ptr<hostrun::core::PluginRegistry> plugin_registry() {
  const char* bundle = std::getenv("HOSTRUN_TEST_PLUGIN_DIR");
  auto registry = std::make_unique<hostrun::core::PluginRegistry>();
  registry->scan({bundle && *bundle ? fs::path(bundle) : fs::path(HOSTRUN_PLUGIN_BUILD_DIR),
                  fs::path(HOSTRUN_FIXTURE_PLUGIN_DIR), fs::path(HOSTRUN_CONFORMANCE_PLUGIN_DIR)});
  return registry;
}

// The reason a plugin the suite needs is missing (not built, or refused), for REQUIRE messages.
inline std::string missing_plugin(const hostrun::core::PluginRegistry& registry, const std::string& name) {
  std::string text = fmt::format("plugin '{}' was not found in", name);
  for (const auto& folder : registry.searched()) text += fmt::format(" {}", folder.string());
  for (const auto& refused : registry.refused()) text += fmt::format("; refused {}: {}", refused.file.string(), refused.reason);
  return text;
}

// Uniform values in [-scale, scale], the same for a seed on every machine.
inline std::vector<float> random_values(size_t count, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-scale, scale);
  std::vector<float> values(count);
  for (float& v : values) v = uniform(rng);
  return values;
}

inline hostrun::ref::DType ref_dtype(hostrun::DType dtype) {
  switch (dtype) {
    case hostrun::DType::f32: return hostrun::ref::DType::f32;
    case hostrun::DType::bf16: return hostrun::ref::DType::bf16;
    case hostrun::DType::f16: return hostrun::ref::DType::f16;
    default: FAIL("no reference conversion for " << hostrun::dtype_name(dtype));
  }
  return hostrun::ref::DType::f32;
}

// `values` rounded to `dtype` and back: what a plugin taking that dtype sees.
inline std::vector<float> rounded_to(const std::vector<float>& values, hostrun::DType dtype) {
  std::vector<std::byte> stored(values.size() * hostrun::dtype_bits(dtype) / 8);
  std::vector<float> out(values.size());
  hostrun::ref::convert_from_f32(values.data(), values.size(), stored.data(), ref_dtype(dtype));
  hostrun::ref::convert_to_f32(stored.data(), ref_dtype(dtype), values.size(), out.data());
  return out;
}

// max |got - want| / max |want|; NaN (a failure) when either holds a NaN.
inline double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  REQUIRE(got.size() == want.size());
  double worst = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double difference = std::abs(double(got[i]) - double(want[i]));
    if (std::isnan(difference)) return NAN;
    worst = std::max(worst, difference);
    scale = std::max(scale, std::abs(double(want[i])));
  }
  return worst / std::max(scale, 1e-30);
}

}  // namespace conformance
