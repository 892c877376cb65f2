// FP8 linear layers (fp8_linear.hpp): the per-row quantizer's scale and
// codes, the product against the same formula in double from the decoded
// codes, against the f32 GEMM within e4m3's precision, per-tensor scales,
// a static input scale, and rows of zeros, NaN and infinity.
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "ref/dtype.hpp"
#include "ref/fp8_linear.hpp"
#include "ref/gemm.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("fp8: a row's largest magnitude becomes 448 and the rest round to e4m3 within half a step") {
  std::mt19937 rng(11);
  const std::size_t m = 5, k = 70;
  std::vector<float> x = random_floats(rng, m * k, -3.0f, 3.0f);
  x[2 * k + 9] = -7.5f;  // row 2's extreme is negative
  std::vector<std::uint8_t> codes(m * k);
  std::vector<float> scales(m);
  quantize_rows_e4m3(x.data(), m, k, codes.data(), scales.data());
  for (std::size_t i = 0; i < m; ++i) {
    float amax = 0.0f;
    for (std::size_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(x[i * k + c]));
    CHECK(scales[i] == amax / 448.0f);
    for (std::size_t c = 0; c < k; ++c) {
      const float q = x[i * k + c] / scales[i];
      const float back = e4m3_to_f32(codes[i * k + c]);
      CHECK(codes[i * k + c] == f32_to_e4m3(q));
      // e4m3 keeps 3 mantissa bits: a normal value is within 2^-4 of itself, a subnormal within 2^-10.
      CHECK(std::fabs(back - q) <= std::max(std::fabs(q) * 0x1p-4f, 0x1p-10f));
    }
  }
  CHECK(e4m3_to_f32(codes[2 * k + 9]) == -448.0f);
}

TEST_CASE("fp8: the product is the scales times the decoded codes' dot product") {
  std::mt19937 rng(12);
  const std::size_t m = 4, n = 9, k = 67;
  const std::vector<float> x = random_floats(rng, m * k, -2.0f, 2.0f), w = random_floats(rng, n * k, -0.5f, 0.5f);
  std::vector<std::uint8_t> w_codes(n * k), x_codes(m * k);
  std::vector<float> w_scale(n), x_scale(m), y(m * n);
  quantize_weight_e4m3(w.data(), n, k, w_codes.data(), w_scale.data());
  quantize_rows_e4m3(x.data(), m, k, x_codes.data(), x_scale.data());
  fp8_linear(x.data(), m, k, {w_codes.data(), w_scale.data(), true}, n, y.data());
  std::vector<float> exact(m * n);
  gemm(x.data(), w.data(), DType::f32, m, n, k, exact.data());
  double worst = 0.0, largest = 0.0;
  for (std::size_t i = 0; i < m; ++i)
    for (std::size_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (std::size_t c = 0; c < k; ++c) sum += double(e4m3_to_f32(x_codes[i * k + c])) * e4m3_to_f32(w_codes[j * k + c]);
      const double want = sum * x_scale[i] * w_scale[j];
      CHECK(std::fabs(y[i * n + j] - want) <= 1e-5 * (std::fabs(want) + 1.0));
      worst = std::max(worst, std::fabs(double(y[i * n + j]) - exact[i * n + j]));
      largest = std::max(largest, std::fabs(double(exact[i * n + j])));
    }
  // Against the f32 product: each factor carries up to 2^-4 relative error, the sums cancel most of it.
  CHECK(worst <= 0.05 * largest);
  CHECK(worst > 0.0);  // it is quantized
}

TEST_CASE("fp8: one scale for the whole tensor equals that scale in every channel") {
  std::mt19937 rng(13);
  const std::size_t m = 3, n = 6, k = 40;
  const std::vector<float> x = random_floats(rng, m * k);
  std::vector<std::uint8_t> codes(n * k);
  for (auto& c : codes) c = std::uint8_t(rng() % 256) & 0x7eu;  // any finite code
  const float one_scale = 0.0123f;
  const std::vector<float> per_channel(n, one_scale);
  std::vector<float> a(m * n), b(m * n);
  fp8_linear(x.data(), m, k, {codes.data(), &one_scale, false}, n, a.data());
  fp8_linear(x.data(), m, k, {codes.data(), per_channel.data(), true}, n, b.data());
  CHECK(a == b);
}

TEST_CASE("fp8: a static input scale replaces the row's own, and what lies beyond 448 times it saturates") {
  const std::size_t k = 4;
  const float x[k] = {1.0f, -2.0f, 100.0f, 0.25f};
  std::uint8_t codes[k];
  float scale = 0.0f;
  quantize_rows_e4m3(x, 1, k, codes, &scale, 0.1f);
  CHECK(scale == 0.1f);
  CHECK(e4m3_to_f32(codes[0]) == 10.0f);
  CHECK(e4m3_to_f32(codes[1]) == -20.0f);
  CHECK(e4m3_to_f32(codes[2]) == 448.0f);  // 1000 saturates
  CHECK(e4m3_to_f32(codes[3]) == 2.5f);
}

TEST_CASE("fp8: a row of zeros has scale 1 and gives zeros; NaN or infinity in a row makes its outputs NaN") {
  const std::size_t m = 3, n = 2, k = 3;
  const float inf = std::numeric_limits<float>::infinity();
  const float x[m * k] = {0.0f, 0.0f, 0.0f, 1.0f, std::nanf(""), 2.0f, -inf, 1.0f, 1.0f};
  std::uint8_t codes[m * k];
  float scales[m];
  quantize_rows_e4m3(x, m, k, codes, scales);
  CHECK(scales[0] == 1.0f);
  CHECK(std::isnan(scales[1]));
  CHECK(std::isnan(scales[2]));
  const std::uint8_t w_codes[n * k] = {0x38, 0x38, 0x38, 0x40, 0x30, 0x38};  // 1 1 1 / 2 0.5 1
  const float w_scale[n] = {1.0f, 0.5f};
  float y[m * n];
  fp8_linear(x, m, k, {w_codes, w_scale, true}, n, y);
  CHECK(y[0] == 0.0f);
  CHECK(y[1] == 0.0f);
  for (int j = 2; j < 6; ++j) CHECK(std::isnan(y[j]));
  // The offline weight quantizer: the same rules per output channel.
  float w[2 * k] = {0.0f, 0.0f, 0.0f, 4.0f, -8.0f, 1.0f};
  std::uint8_t wq[2 * k];
  float ws[2];
  quantize_weight_e4m3(w, 2, k, wq, ws);
  CHECK(ws[0] == 1.0f);
  CHECK(ws[1] == 8.0f / 448.0f);
  CHECK(e4m3_to_f32(wq[4]) == -448.0f);
  CHECK(e4m3_to_f32(wq[3]) == 224.0f);
}

TEST_CASE("fp8: padded rows give the contiguous product bit for bit, and padding is left alone") {
  std::mt19937 rng(14);
  const std::size_t m = 5, n = 7, k = 33, x_stride = k + 3, y_stride = n + 2;
  const std::vector<float> x = random_floats(rng, m * k, -2.0f, 2.0f), w = random_floats(rng, n * k);
  std::vector<std::uint8_t> codes(n * k);
  std::vector<float> scale(n);
  quantize_weight_e4m3(w.data(), n, k, codes.data(), scale.data());
  std::vector<float> y(m * n);
  fp8_linear(x.data(), m, k, {codes.data(), scale.data(), true}, n, y.data());

  std::vector<float> padded_x(m * x_stride, 1e30f), padded_y(m * y_stride, -7.0f);
  for (std::size_t i = 0; i < m; ++i) std::copy_n(x.begin() + long(i * k), k, padded_x.begin() + long(i * x_stride));
  std::vector<float> workspace(fp8_linear_workspace_floats(m, k));
  fp8_linear(Fp8Rows{padded_x.data(), x_stride, padded_y.data(), y_stride, m}, k, {codes.data(), scale.data(), true},
             n, 0.0f, workspace.data());
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < n; ++j) CHECK(padded_y[i * y_stride + j] == y[i * n + j]);
    for (std::size_t j = n; j < y_stride; ++j) CHECK(padded_y[i * y_stride + j] == -7.0f);
  }
  // One row at a time: the same values (the sums do not depend on how many rows share a call).
  for (std::size_t i = 0; i < m; ++i) {
    float one[n];
    fp8_linear(x.data() + i * k, 1, k, {codes.data(), scale.data(), true}, n, one);
    for (std::size_t j = 0; j < n; ++j) CHECK(one[j] == y[i * n + j]);
  }
}
