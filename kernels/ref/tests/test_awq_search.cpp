// AWQ's scale search (awq_search.hpp): with a few input channels carrying
// large activations, as real LLM inputs do, scaling them before rounding cuts
// the output error of 4-bit weights well below plain rounding; with uniform
// activations it is never worse; scales of 1 are plain rounding.
#include <algorithm>
#include <cmath>
#include <random>

#include "ref/awq.hpp"
#include "ref/awq_search.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

namespace {

std::vector<float> activations(std::mt19937& rng, std::size_t tokens, std::size_t in, std::size_t salient,
                               float salient_gain) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(tokens * in);
  for (std::size_t t = 0; t < tokens; ++t)
    for (std::size_t i = 0; i < in; ++i) x[t * in + i] = normal(rng) * (i % (in / salient) == 3 ? salient_gain : 1.0f);
  return x;
}

}  // namespace

TEST_CASE("awq search: salient input channels make the scaled rounding clearly better than plain rounding") {
  std::mt19937 rng(11);
  const std::size_t in = 256, out = 64, tokens = 96, group = 128;
  const std::vector<float> x = activations(rng, tokens, in, 4, 25.0f);
  const std::vector<float> w1 = random_floats(rng, out * in, -0.05f, 0.05f);
  const std::vector<float> w2 = random_floats(rng, out * in, -0.05f, 0.05f);
  const AwqLinearView layers[] = {{w1.data(), out}, {w2.data(), out}};
  const AwqScaleSearch found = awq_search_scales(layers, in, x.data(), tokens, group);
  MESSAGE("alpha " << found.alpha << ", loss " << found.loss << " against plain rounding's " << found.rtn_loss);
  CHECK(found.alpha > 0.0f);
  CHECK(found.loss < 0.7 * found.rtn_loss);
  REQUIRE(found.scales.size() == in);
  // The salient channels got the largest scales.
  float salient_min = INFINITY, other_max = 0.0f;
  for (std::size_t i = 0; i < in; ++i) {
    if (i % (in / 4) == 3) salient_min = std::min(salient_min, found.scales[i]);
    else other_max = std::max(other_max, found.scales[i]);
  }
  CHECK(salient_min > other_max);
}

TEST_CASE("awq search: uniform activations are never made worse, and scales of 1 are plain rounding") {
  std::mt19937 rng(13);
  const std::size_t in = 128, out = 32, tokens = 64, group = 64;
  const std::vector<float> x = activations(rng, tokens, in, 4, 1.0f);
  const std::vector<float> w = random_floats(rng, out * in, -0.05f, 0.05f);
  const AwqLinearView layers[] = {{w.data(), out}};
  const AwqScaleSearch found = awq_search_scales(layers, in, x.data(), tokens, group);
  CHECK(found.loss <= found.rtn_loss);

  std::vector<float> ones(in, 1.0f), fake(out * in), plain(out * in);
  awq_fake_quantize_scaled(w.data(), out, in, group, ones, fake.data());
  awq_dequantize(awq_quantize_rtn_packed(w.data(), out, in, group).view(), plain.data());
  CHECK(fake == plain);
}

// Heavy-tailed weights (Student t, 3 degrees of freedom: a few large values
// in most groups, as trained weights have): plain rounding spends the
// group's 16 steps on the extremes; clipping them trades a few weights'
// error for finer steps everywhere else, and the partial products decide.
TEST_CASE("awq clip search: heavy-tailed weights are clipped and the output error drops; no shrink is plain rounding") {
  std::mt19937 rng(17);
  const std::size_t in = 256, out = 48, tokens = 64, group = 128;
  const std::vector<float> x = activations(rng, tokens, in, 4, 1.0f);
  std::student_t_distribution<float> heavy(3.0f);
  std::vector<float> w(out * in);
  for (float& v : w) v = 0.01f * heavy(rng);
  const AwqClipSearch found = awq_search_clip(w.data(), out, in, x.data(), tokens, group);
  std::size_t shrunk = 0;
  for (float k : found.shrink) shrunk += k > 0.0f;
  MESSAGE("clipped loss " << found.loss << " against plain rounding's " << found.rtn_loss << "; " << shrunk << " of "
                          << found.shrink.size() << " groups clipped");
  CHECK(found.loss < 0.9 * found.rtn_loss);
  REQUIRE(found.shrink.size() == out * (in / group));
  CHECK(shrunk > found.shrink.size() / 2);
  for (float k : found.shrink) CHECK((k >= 0.0f && k < 0.5f));
  // Clipping only ever moves a weight toward zero.
  for (std::size_t i = 0; i < w.size(); ++i) CHECK(std::fabs(found.clipped[i]) <= std::fabs(w[i]));

  // A search of one step (no shrink) keeps W and equals plain rounding.
  const AwqClipSearch none = awq_search_clip(w.data(), out, in, x.data(), tokens, group, 20, 0.05);
  CHECK(none.clipped == w);
  CHECK(none.loss == none.rtn_loss);
}
