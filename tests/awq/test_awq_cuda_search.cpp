// plugins/awq's CUDA search (awq_cuda_search.hpp) against ref's searches on
// the same weights and inputs: the same alpha and scales (or, where two
// alphas' losses tie to summation order, losses within 1e-5), the same clip
// choices on all but near-tied (row, group)s, and losses equal to ~1e-5.
// Inputs with a few loud channels and weights with outliers, so both
// searches have something to find. Needs a GPU.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <random>
#include <vector>

#include "awq_cuda_search.hpp"
#include "ref/awq_search.hpp"

namespace {

struct Problem {
  std::vector<float> x;                  // [tokens, in]
  std::vector<std::vector<float>> w;     // per layer [out, in]
  std::vector<size_t> out;
};

Problem make_problem(size_t tokens, size_t in, std::vector<size_t> outs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p;
  std::vector<float> channel(in);
  for (size_t i = 0; i < in; ++i) channel[i] = i % 37 == 5 ? 20.0f : 0.5f + float(i % 7) * 0.2f;  // loud channels
  p.x.resize(tokens * in);
  for (size_t t = 0; t < tokens; ++t)
    for (size_t i = 0; i < in; ++i) p.x[t * in + i] = normal(rng) * channel[i];
  for (size_t out : outs) {
    std::vector<float> w(out * in);
    for (float& v : w) v = normal(rng) * 0.02f;
    for (size_t o = 0; o < out; o += 3) w[o * in + (o * 13) % in] = 0.3f;  // outliers
    p.w.push_back(std::move(w));
    p.out.push_back(out);
  }
  return p;
}

bool close(double a, double b, double rel) { return std::fabs(a - b) <= rel * std::max(std::fabs(a), std::fabs(b)); }

}  // namespace

TEST_CASE("the CUDA AWQ scale search picks ref's alpha and scales") {
  hostrun::awq::CudaAwqSearch gpu(0);
  struct Case { size_t tokens, in, group; std::vector<size_t> outs; };
  for (const Case& c : {Case{256, 256, 128, {96, 32, 32}}, Case{200, 192, 64, {128}}, Case{64, 128, 32, {40, 40}}}) {
    CAPTURE(c.in);
    CAPTURE(c.group);
    const Problem p = make_problem(c.tokens, c.in, c.outs, c.in * 7 + c.group);
    std::vector<hostrun::ref::AwqLinearView> views;
    for (size_t l = 0; l < p.w.size(); ++l) views.push_back({p.w[l].data(), p.out[l]});
    const auto want = hostrun::ref::awq_search_scales(views, c.in, p.x.data(), c.tokens, c.group);
    const auto got = gpu.search_scales(views, c.in, p.x.data(), c.tokens, c.group);
    MESSAGE(fmt::format("in {} group {}: alpha ref {} cuda {}; loss ref {:.6e} cuda {:.6e}; rtn ref {:.6e} cuda {:.6e}",
                        c.in, c.group, want.alpha, got.alpha, want.loss, got.loss, want.rtn_loss, got.rtn_loss));
    CHECK(close(got.rtn_loss, want.rtn_loss, 1e-5));
    CHECK(close(got.loss, want.loss, 1e-5));
    CHECK(want.alpha > 0.0f);  // the loud channels make scaling pay
    if (got.alpha == want.alpha) CHECK(got.scales == want.scales);
  }
}

TEST_CASE("the CUDA AWQ clip search clips as ref does") {
  hostrun::awq::CudaAwqSearch gpu(0);
  struct Case { size_t tokens, in, out, group; };
  for (const Case& c : {Case{128, 256, 64, 128}, Case{100, 192, 48, 64}, Case{64, 128, 40, 32}}) {
    CAPTURE(c.in);
    CAPTURE(c.group);
    const Problem p = make_problem(c.tokens, c.in, {c.out}, c.in * 11 + c.group);
    const auto want = hostrun::ref::awq_search_clip(p.w[0].data(), c.out, c.in, p.x.data(), c.tokens, c.group);
    const auto got = gpu.search_clip(p.w[0].data(), c.out, c.in, p.x.data(), c.tokens, c.group);
    REQUIRE(got.shrink.size() == want.shrink.size());
    REQUIRE(got.clipped.size() == want.clipped.size());
    size_t same = 0, clipped = 0;
    for (size_t i = 0; i < want.shrink.size(); ++i) {
      same += got.shrink[i] == want.shrink[i];
      clipped += want.shrink[i] > 0.0f;
    }
    size_t same_weights = 0;
    for (size_t i = 0; i < want.clipped.size(); ++i) same_weights += got.clipped[i] == want.clipped[i];
    MESSAGE(fmt::format("in {} group {}: {} of {} choices equal ({} clipped by ref); loss ref {:.6e} cuda {:.6e}",
                        c.in, c.group, same, want.shrink.size(), clipped, want.loss, got.loss));
    CHECK(clipped > 0);
    CHECK(double(same) >= 0.99 * double(want.shrink.size()));
    CHECK(double(same_weights) >= 0.99 * double(want.clipped.size()));
    CHECK(close(got.rtn_loss, want.rtn_loss, 1e-5));
    CHECK(close(got.loss, want.loss, 1e-3));
    CHECK(got.loss < got.rtn_loss);
  }
}
