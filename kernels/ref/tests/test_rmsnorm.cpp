#include <cmath>

#include "ref/rmsnorm.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

namespace {

// The textbook formula in double.
std::vector<double> naive_rmsnorm(const std::vector<float>& x, const std::vector<float>& weight, std::size_t rows,
                                  std::size_t hidden, double eps) {
  std::vector<double> y(rows * hidden);
  for (std::size_t r = 0; r < rows; ++r) {
    double mean_square = 0.0;
    for (std::size_t i = 0; i < hidden; ++i) mean_square += std::pow(x[r * hidden + i], 2) / hidden;
    for (std::size_t i = 0; i < hidden; ++i) {
      y[r * hidden + i] = x[r * hidden + i] / std::sqrt(mean_square + eps) * weight[i];
    }
  }
  return y;
}

}  // namespace

TEST_CASE("rmsnorm of [1, 2, 3] by hand") {
  // mean of squares = 14/3, rms = sqrt(14/3) = 2.160247
  const std::vector<float> x = {1.0f, 2.0f, 3.0f};
  const std::vector<float> weight = {1.0f, 1.0f, 2.0f};
  std::vector<float> y(3);
  rmsnorm(x.data(), weight.data(), DType::f32, 1, 3, 0.0f, y.data());
  CHECK(y[0] == doctest::Approx(0.4629100).epsilon(1e-6));
  CHECK(y[1] == doctest::Approx(0.9258201).epsilon(1e-6));
  CHECK(y[2] == doctest::Approx(2.0 * 1.3887301).epsilon(1e-6));
  // eps matters: all-zero rows stay zero instead of NaN.
  const std::vector<float> zeros(3, 0.0f);
  rmsnorm(zeros.data(), weight.data(), DType::f32, 1, 3, 1e-5f, y.data());
  for (const float v : y) CHECK(v == 0.0f);
}

TEST_CASE("rmsnorm matches the naive formula on random rows, every weight dtype") {
  std::mt19937 rng(31);
  for (const DType dtype : all_dtypes) {
    for (const std::size_t hidden : {1u, 64u, 200u, 512u}) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(hidden);
      const std::size_t rows = 5;
      const std::vector<float> x = random_floats(rng, rows * hidden, -3.0f, 3.0f);
      const StoredValues weight = store(random_floats(rng, hidden, 0.5f, 1.5f), dtype);
      std::vector<float> y(rows * hidden);
      rmsnorm(x.data(), weight.bytes.data(), dtype, rows, hidden, 1e-5f, y.data());
      check_close(y, naive_rmsnorm(x, weight.as_f32, rows, hidden, 1e-5), 1e-6, 1e-5);
      // In place gives the same answer.
      std::vector<float> in_place = x;
      rmsnorm(in_place.data(), weight.bytes.data(), dtype, rows, hidden, 1e-5f, in_place.data());
      CHECK(in_place == y);
    }
  }
}

TEST_CASE("add_rmsnorm: residual += x, then y = rmsnorm(residual)") {
  std::mt19937 rng(32);
  for (const std::size_t hidden : {64u, 96u}) {
    const std::size_t rows = 3;
    const std::vector<float> x = random_floats(rng, rows * hidden);
    const std::vector<float> residual_before = random_floats(rng, rows * hidden);
    const StoredValues weight = store(random_floats(rng, hidden), DType::bf16);
    std::vector<float> residual = residual_before;
    std::vector<float> y(rows * hidden);
    add_rmsnorm(residual.data(), x.data(), weight.bytes.data(), DType::bf16, rows, hidden, 1e-6f, y.data());
    std::vector<float> expected_residual(rows * hidden);
    for (std::size_t i = 0; i < expected_residual.size(); ++i) expected_residual[i] = residual_before[i] + x[i];
    CHECK(residual == expected_residual);
    check_close(y, naive_rmsnorm(expected_residual, weight.as_f32, rows, hidden, 1e-6), 1e-6, 1e-5);
  }
}
