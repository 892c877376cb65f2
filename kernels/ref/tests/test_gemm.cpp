#include <cmath>

#include "ref/gemm.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("gemm by hand: y = x @ W^T") {
  const std::vector<float> x = {1, 2, 3, 4};          // [2, 2]
  const std::vector<float> weight = {3, 4, 5, 6, -1, 0};  // [3, 2]
  std::vector<float> y(6, 99.0f);
  gemm(x.data(), weight.data(), DType::f32, 2, 3, 2, y.data());
  CHECK(y == std::vector<float>{11, 17, -1, 25, 39, -3});
}

TEST_CASE("gemm matches a naive double dot product, every weight dtype and awkward shapes") {
  std::mt19937 rng(51);
  struct Shape {
    std::size_t m, n, k;
  };
  // Covers: degenerate sizes, n not a multiple of 4 or of the 32-row tile,
  // k not a multiple of 8 and larger than the 512-column tile.
  const Shape shapes[] = {{1, 1, 1}, {3, 5, 7}, {1, 64, 64}, {17, 33, 65}, {4, 70, 600}, {9, 128, 1100}, {2, 512, 256}};
  for (const DType dtype : all_dtypes) {
    for (const Shape& shape : shapes) {
      CAPTURE(dtype_name(dtype));
      CAPTURE(shape.m);
      CAPTURE(shape.n);
      CAPTURE(shape.k);
      const std::vector<float> x = random_floats(rng, shape.m * shape.k);
      const StoredValues weight = store(random_floats(rng, shape.n * shape.k), dtype);
      std::vector<float> y(shape.m * shape.n);
      gemm(x.data(), weight.bytes.data(), dtype, shape.m, shape.n, shape.k, y.data());
      // f32 accumulation error grows with k: bound it by k * eps * sum |x w|.
      for (std::size_t row = 0; row < shape.m; ++row) {
        for (std::size_t col = 0; col < shape.n; ++col) {
          double expected = 0.0, magnitude = 0.0;
          for (std::size_t i = 0; i < shape.k; ++i) {
            const double product = static_cast<double>(x[row * shape.k + i]) * weight.as_f32[col * shape.k + i];
            expected += product;
            magnitude += std::fabs(product);
          }
          const double actual = y[row * shape.n + col];
          const double bound = 1e-6 * (1.0 + static_cast<double>(shape.k) / 64.0) * magnitude + 1e-7;
          if (!(std::fabs(actual - expected) <= bound)) {
            INFO("y[" << row << ", " << col << "] = " << actual << ", expected " << expected);
            REQUIRE(std::fabs(actual - expected) <= bound);
          }
        }
      }
    }
  }
}
