#include <cmath>

#include "ref/dense_attention.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("dense_attention by hand: one query, two keys") {
  // q . k = {1, 3} -> scale 0.5 -> {0.5, 1.5}: weights e^0.5, e^1.5 over v rows {2, 0} and {0, 4}.
  const std::vector<float> q = {1, 1}, k = {1, 0, 1, 2}, v = {2, 0, 0, 4};
  std::vector<float> out(2);
  const AttentionStrides rows{.batch = 0, .head = 0, .token = 2, .dim = 1};
  dense_attention({.q_len = 1, .kv_len = 2, .head_dim = 2, .scale = 0.5f}, q.data(), rows, k.data(), rows, v.data(),
                  rows, out.data(), rows);
  const double w0 = std::exp(0.5), w1 = std::exp(1.5);
  CHECK(out[0] == doctest::Approx(2 * w0 / (w0 + w1)));
  CHECK(out[1] == doctest::Approx(4 * w1 / (w0 + w1)));
}

TEST_CASE("dense_attention reads and writes through strides as it does contiguous tensors") {
  // [batch 2, tokens 5, heads 3, dim 4] (the layout before a head-split
  // transpose) against the same values copied to [batch, heads, tokens, dim].
  std::mt19937 rng(5);
  const int B = 2, T = 5, H = 3, D = 4;
  const DenseAttentionShape shape{.batch = B, .heads = H, .q_len = T, .kv_len = T, .head_dim = D, .scale = 0.7f};
  const AttentionStrides split{.batch = T * H * D, .head = D, .token = H * D, .dim = 1};
  const AttentionStrides plain{.batch = H * T * D, .head = T * D, .token = D, .dim = 1};
  const std::vector<float> q = random_floats(rng, B * T * H * D, -2.0f, 2.0f), k = random_floats(rng, q.size(), -2.0f, 2.0f),
                           v = random_floats(rng, q.size(), -2.0f, 2.0f);
  const auto to_plain = [&](const std::vector<float>& x) {
    std::vector<float> y(x.size());
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h)
        for (int t = 0; t < T; ++t)
          for (int d = 0; d < D; ++d) y[std::size_t(plain.at(b, h, t, d))] = x[std::size_t(split.at(b, h, t, d))];
    return y;
  };
  std::vector<float> strided(q.size()), contiguous(q.size());
  dense_attention(shape, q.data(), split, k.data(), split, v.data(), split, strided.data(), split);
  const std::vector<float> qp = to_plain(q), kp = to_plain(k), vp = to_plain(v);
  dense_attention(shape, qp.data(), plain, kp.data(), plain, vp.data(), plain, contiguous.data(), plain);
  CHECK(to_plain(strided) == contiguous);
  // Each output row is a convex combination of v's rows: within their range per dim.
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h)
      for (int d = 0; d < D; ++d) {
        float lo = INFINITY, hi = -INFINITY;
        for (int t = 0; t < T; ++t) lo = std::min(lo, vp[std::size_t(plain.at(b, h, t, d))]), hi = std::max(hi, vp[std::size_t(plain.at(b, h, t, d))]);
        for (int t = 0; t < T; ++t) {
          const float o = contiguous[std::size_t(plain.at(b, h, t, d))];
          CHECK(o >= lo - 1e-6f);
          CHECK(o <= hi + 1e-6f);
        }
      }
}
