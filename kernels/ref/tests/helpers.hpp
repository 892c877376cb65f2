// Shared test utilities: seeded random data, 16-bit storage round trips, and
// closeness checks that print where a mismatch is.
#pragma once

#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "ref/dtype.hpp"

namespace hostrun::ref::test {

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t count, float low = -1.0f, float high = 1.0f) {
  std::uniform_real_distribution<float> dist(low, high);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

// values stored in `dtype` (bytes), plus what they read back as.
struct StoredValues {
  std::vector<unsigned char> bytes;
  std::vector<float> as_f32;
};

inline StoredValues store(const std::vector<float>& values, DType dtype) {
  StoredValues stored;
  stored.bytes.resize(values.size() * dtype_size(dtype));
  stored.as_f32.resize(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    store_from_f32(stored.bytes.data(), dtype, i, values[i]);
    stored.as_f32[i] = load_as_f32(stored.bytes.data(), dtype, i);
  }
  return stored;
}

// |actual - expected| <= abs_tol + rel_tol * |expected| element by element;
// reports the first mismatch with its index.
template <typename Expected>
void check_close(const std::vector<float>& actual, const std::vector<Expected>& expected, double abs_tol,
                 double rel_tol) {
  REQUIRE(actual.size() == expected.size());
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double e = static_cast<double>(expected[i]);
    const double a = static_cast<double>(actual[i]);
    if (!(std::fabs(a - e) <= abs_tol + rel_tol * std::fabs(e))) {
      INFO("index " << i << ": actual " << a << ", expected " << e);
      CHECK(std::fabs(a - e) <= abs_tol + rel_tol * std::fabs(e));
      return;
    }
  }
}

inline constexpr DType all_dtypes[] = {DType::f32, DType::bf16, DType::f16};

}  // namespace hostrun::ref::test
