// AutoAWQ's GEMM format (awq.hpp): the packing order against words written
// out by hand from AutoAWQ's packer, the dequantization formula, the CPU
// GEMM against dequantize-then-multiply, and round-to-nearest on ordinary and
// adversarial groups.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "ref/awq.hpp"
#include "ref/dtype.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("awq: the interleaved nibble order is AutoAWQ's") {
  // AutoAWQ packs column 8c + order[n] into nibble n, order = 0 2 4 6 1 3 5 7.
  // Codes 1..8 in columns 0..7 therefore make nibbles (low to high) 1 3 5 7 2 4 6 8.
  const std::uint8_t codes[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::int32_t word = 0;
  awq_pack(codes, 1, 8, &word);
  CHECK(static_cast<std::uint32_t>(word) == 0x86427531u);
  for (std::size_t j = 0; j < 8; ++j) CHECK(awq_code(&word, 8, 0, j) == codes[j]);
  // vLLM's unpack reads column j from nibble (0 4 1 5 2 6 3 7)[j]: the same.
  const int reverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  for (std::size_t j = 0; j < 8; ++j)
    CHECK(((static_cast<std::uint32_t>(word) >> (4 * reverse[j])) & 0xfu) == codes[j]);
  // The top nibble reaches the sign bit of the int32: read as unsigned.
  const std::uint8_t fifteen[8] = {15, 15, 15, 15, 15, 15, 15, 15};
  awq_pack(fifteen, 1, 8, &word);
  CHECK(word == -1);
  for (std::size_t j = 0; j < 8; ++j) CHECK(awq_code(&word, 8, 0, j) == 15);
}

TEST_CASE("awq: pack and read back every code of a random tensor") {
  std::mt19937 rng(3);
  const std::size_t rows = 7, cols = 48;
  std::vector<std::uint8_t> codes(rows * cols);
  for (auto& c : codes) c = std::uint8_t(rng() % 16);
  std::vector<std::int32_t> packed(rows * cols / 8);
  awq_pack(codes.data(), rows, cols, packed.data());
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) REQUIRE(awq_code(packed.data(), cols, r, c) == codes[r * cols + c]);
}

namespace {

// A layer from RTN of `weight` [out, in], with its packed tensors kept alive.
struct PackedLayer {
  std::vector<std::int32_t> qweight, qzeros;
  std::vector<std::uint16_t> scales;
  std::vector<std::uint8_t> q, zeros;
  AwqWeights view;
  PackedLayer(const std::vector<float>& weight, std::size_t out, std::size_t in, std::size_t group)
      : qweight(in * out / 8), qzeros(in / group * out / 8), scales(in / group * out), q(in * out),
        zeros(in / group * out) {
    awq_quantize_rtn(weight.data(), out, in, group, q.data(), zeros.data(), scales.data());
    awq_pack(q.data(), in, out, qweight.data());
    awq_pack(zeros.data(), in / group, out, qzeros.data());
    view = {qweight.data(), qzeros.data(), scales.data(), in, out, group};
  }
};

}  // namespace

TEST_CASE("awq: dequantize is (q - z) * s per group, and RTN is within half a step on mixed-sign groups") {
  std::mt19937 rng(5);
  for (const std::size_t group : {32, 64, 128}) {
    CAPTURE(group);
    const std::size_t out = 24, in = 256;
    const std::vector<float> weight = random_floats(rng, out * in, -0.2f, 0.2f);
    PackedLayer layer(weight, out, in, group);
    std::vector<float> w(out * in);
    awq_dequantize(layer.view, w.data());
    for (std::size_t o = 0; o < out; ++o)
      for (std::size_t i = 0; i < in; ++i) {
        const std::size_t g = i / group;
        const float s = f16_to_f32(layer.scales[g * out + o]);
        const float expected = (float(layer.q[i * out + o]) - float(layer.zeros[g * out + o])) * s;
        REQUIRE(w[o * in + i] == expected);
        // Every group of random signs spans zero: nothing clips beyond half a step (plus f16 rounding of s).
        REQUIRE(std::fabs(w[o * in + i] - weight[o * in + i]) <= 0.5f * s * 1.01f + 1e-7f);
      }
  }
}

TEST_CASE("awq: RTN on adversarial groups gives codes in range and finite weights") {
  const std::size_t out = 8, in = 64, group = 32;
  std::vector<float> weight(out * in, 0.0f);
  for (std::size_t i = 0; i < in; ++i) {
    weight[0 * in + i] = 0.0f;                         // all zero
    weight[1 * in + i] = 0.5f;                         // all equal, positive: AutoAWQ's zero clamps at 0
    weight[2 * in + i] = -0.5f;                        // all equal, negative
    weight[3 * in + i] = i % 2 ? 1e-3f : -1e-3f;       // tiny range
    weight[4 * in + i] = i == 5 ? 60000.0f : 0.0f;     // one outlier near f16's top
    weight[5 * in + i] = float(i) / 10.0f;             // all positive: codes clip at 15
    weight[6 * in + i] = -float(i) / 10.0f;            // all negative
    weight[7 * in + i] = i % 3 == 0 ? -2.0f : 1.0f;
  }
  PackedLayer layer(weight, out, in, group);
  for (const auto q : layer.q) CHECK(q <= 15);
  for (const auto z : layer.zeros) CHECK(z <= 15);
  std::vector<float> w(out * in);
  awq_dequantize(layer.view, w.data());
  for (const float v : w) CHECK(std::isfinite(v));
  // The all-zero row stays zero; the mixed-sign rows stay within half a step.
  for (std::size_t i = 0; i < in; ++i) CHECK(w[0 * in + i] == 0.0f);
  for (std::size_t i = 0; i < in; ++i) {
    const float s = f16_to_f32(layer.scales[(i / group) * out + 7]);
    CHECK(std::fabs(w[7 * in + i] - weight[7 * in + i]) <= 0.5f * s * 1.01f);
  }
}

TEST_CASE("awq: the CPU GEMM equals dequantize-then-multiply") {
  std::mt19937 rng(7);
  const std::size_t out = 40, in = 192, group = 64, m = 5;
  const std::vector<float> weight = random_floats(rng, out * in, -0.1f, 0.1f);
  PackedLayer layer(weight, out, in, group);
  std::vector<float> w(out * in);
  awq_dequantize(layer.view, w.data());
  const std::vector<float> x = random_floats(rng, m * in);
  std::vector<float> y(m * out), workspace(awq_gemm_workspace_floats(layer.view));
  awq_gemm(layer.view, x.data(), in, m, y.data(), out, workspace.data());
  for (std::size_t r = 0; r < m; ++r)
    for (std::size_t o = 0; o < out; ++o) {
      double want = 0;
      for (std::size_t i = 0; i < in; ++i) want += double(x[r * in + i]) * w[o * in + i];
      CHECK(y[r * out + o] == doctest::Approx(want).epsilon(1e-5));
    }
}
