// awq_repack (host code of kernels/cuda, so CI runs it without a GPU): every
// code, zero point and scale of a checkpoint lands where the W4A16 kernel
// reads it (the layout in cuda/awq_gemm.hpp), and the padding past
// in_features adds nothing (code 0, scale 0).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "cuda/awq_gemm.hpp"
#include "ref/awq.hpp"

namespace {

namespace ref = hostrun::ref;
namespace gpu = hostrun::cuda;

struct Layer {
  std::vector<std::uint8_t> q, z;  // [k, n], [groups, n]
  std::vector<std::uint16_t> scales;
  std::vector<std::int32_t> qweight, qzeros;
  ref::AwqWeights view;
};

Layer make_layer(int n, int k, int group, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> code(0, 15), bits(0, 0x7bff);
  Layer l;
  const int groups = k / group;
  l.q.resize(std::size_t(k) * n);
  l.z.resize(std::size_t(groups) * n);
  l.scales.resize(std::size_t(groups) * n);
  for (auto& c : l.q) c = std::uint8_t(code(rng));
  for (auto& c : l.z) c = std::uint8_t(code(rng));
  for (auto& s : l.scales) s = std::uint16_t(bits(rng));
  l.qweight.resize(l.q.size() / 8);
  l.qzeros.resize(l.z.size() / 8);
  ref::awq_pack(l.q.data(), std::size_t(k), std::size_t(n), l.qweight.data());
  ref::awq_pack(l.z.data(), std::size_t(groups), std::size_t(n), l.qzeros.data());
  l.view = {l.qweight.data(), l.qzeros.data(), l.scales.data(), std::size_t(k), std::size_t(n), std::size_t(group)};
  return l;
}

}  // namespace

TEST_CASE("awq_repack places every code, zero point and scale where the kernel reads it") {
  struct Shape {
    int n, k, group;
  };
  // k a multiple of 128, k padded (160 -> 256, 96 -> 128), wide and narrow n.
  for (const Shape s : {Shape{64, 256, 128}, Shape{24, 160, 32}, Shape{136, 96, 32}, Shape{8, 192, 64}}) {
    INFO("n=" << s.n << " k=" << s.k << " group=" << s.group);
    const Layer layer = make_layer(s.n, s.k, s.group, std::uint64_t(s.n * 1000 + s.k));
    const gpu::AwqRepacked r = gpu::awq_repack(layer.view);
    CHECK(r.padded_in == (s.k + 127) / 128 * 128);
    CHECK(r.codes.size() == std::size_t((s.n / 8 + 3) / 4 * 4) * (r.padded_in / 128) * 32 * 4);
    long long misplaced = 0;
    for (int k = 0; k < s.k; ++k)
      for (int n = 0; n < s.n; ++n) misplaced += gpu::awq_repacked_code(r, k, n) != layer.q[std::size_t(k) * s.n + n];
    CHECK(misplaced == 0);
    long long padding = 0;
    for (int k = s.k; k < r.padded_in; ++k)
      for (int n = 0; n < s.n; ++n) padding += gpu::awq_repacked_code(r, k, n) != 0;
    CHECK(padding == 0);
    // The layout as awq_gemm.hpp writes it: [tile group][block][tile in group][lane][word]; the
    // tiles that round n / 8 up to whole groups of four hold zeros.
    const int k_blocks = r.padded_in / 128, n_tiles = s.n / 8;
    long long off_layout = 0, padding_tiles = 0;
    for (int k = 0; k < s.k; ++k)
      for (int n = 0; n < s.n; ++n) {
        const int kb = k / 128, within = k % 128, step = within / 16, t = (within % 16) / 4, j = (within % 4) / 2,
                  e = within % 2, tile = n / 8, lane = (n % 8) * 4 + t;
        const std::size_t word = ((((std::size_t(tile / 4) * k_blocks + kb) * 4 + tile % 4) * 32 + lane) * 4) + step / 2;
        off_layout += ((r.codes[word] >> (4 * (2 * (step % 2) + j + 4 * e))) & 0xfu) != layer.q[std::size_t(k) * s.n + n];
      }
    for (std::size_t word = 0; word < r.codes.size(); ++word)
      if (int(word / 128 % 4) + int(word / (128 * 4 * std::size_t(k_blocks))) * 4 >= n_tiles) padding_tiles += r.codes[word] != 0;
    CHECK(off_layout == 0);
    CHECK(padding_tiles == 0);
    // Zero points in plain nibble order, scales as they were; padded groups zero.
    const int groups = s.k / s.group, padded_groups = r.padded_in / s.group;
    REQUIRE(r.zeros.size() == std::size_t(padded_groups) * (s.n / 8));
    REQUIRE(r.scales.size() == std::size_t(padded_groups) * s.n);
    long long wrong = 0;
    for (int g = 0; g < padded_groups; ++g)
      for (int n = 0; n < s.n; ++n) {
        const std::uint32_t zero = (r.zeros[std::size_t(g) * (s.n / 8) + n / 8] >> (4 * (n % 8))) & 0xfu;
        const std::uint16_t scale = r.scales[std::size_t(g) * s.n + n];
        if (g < groups)
          wrong += zero != layer.z[std::size_t(g) * s.n + n] || scale != layer.scales[std::size_t(g) * s.n + n];
        else
          wrong += zero != 0 || scale != 0;
      }
    CHECK(wrong == 0);
  }
}
