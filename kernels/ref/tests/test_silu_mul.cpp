#include <cmath>

#include "ref/silu_mul.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("silu_and_mul by hand: [gate | up] halves of each row") {
  // token 0: gate = {0, 1, -100}, up = {5, 2, 3}; token 1: gate = {2, 50, -1}, up = {1, 1, -1}
  const std::vector<float> gate_up = {0, 1, -100, 5, 2, 3, 2, 50, -1, 1, 1, -1};
  std::vector<float> out(6);
  silu_and_mul(gate_up.data(), 2, 3, out.data());
  CHECK(out[0] == 0.0f);
  CHECK(out[1] == doctest::Approx(2.0 / (1.0 + std::exp(-1.0))));  // 1.4621172
  CHECK(out[2] == doctest::Approx(0.0).epsilon(1e-30));            // -100 * 3.7e-44 * 3
  CHECK(std::isfinite(out[2]));
  CHECK(out[3] == doctest::Approx(2.0 / (1.0 + std::exp(-2.0))));  // 1.7615942
  CHECK(out[4] == doctest::Approx(50.0));
  CHECK(out[5] == doctest::Approx(1.0 / (1.0 + std::exp(1.0))));   // silu(-1) * -1 = 0.2689414
}

TEST_CASE("silu_and_mul matches x * sigmoid(x) * up on random rows") {
  std::mt19937 rng(61);
  for (const std::size_t intermediate : {1u, 64u, 172u, 1376u}) {
    const std::size_t tokens = 7;
    const std::vector<float> gate_up = random_floats(rng, tokens * 2 * intermediate, -12.0f, 12.0f);
    std::vector<float> out(tokens * intermediate);
    silu_and_mul(gate_up.data(), tokens, intermediate, out.data());
    std::vector<double> expected(out.size());
    for (std::size_t t = 0; t < tokens; ++t) {
      for (std::size_t i = 0; i < intermediate; ++i) {
        const double gate = gate_up[t * 2 * intermediate + i];
        const double up = gate_up[t * 2 * intermediate + intermediate + i];
        const double sigmoid = 0.5 * (1.0 + std::tanh(gate / 2.0));  // a different route to 1/(1+e^-x)
        expected[t * intermediate + i] = gate * sigmoid * up;
      }
    }
    check_close(out, expected, 1e-6, 1e-5);
  }
}
