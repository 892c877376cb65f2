#include <set>

#include "ref/rng.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;

TEST_CASE("philox4x32-10 reproduces the Random123 known-answer vectors") {
  // Random123 tests/kat_vectors, "philox4x32 10": counter, key -> output.
  CHECK(philox4x32_10({0, 0, 0, 0}, {0, 0}) == PhiloxCounter{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  CHECK(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}) ==
        PhiloxCounter{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  CHECK(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}) ==
        PhiloxCounter{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
}

TEST_CASE("sampling stream: documented key/counter layout") {
  const std::uint64_t seed = 0x0123456789abcdefull;
  const std::uint64_t step = 0x0000000500000007ull;
  const PhiloxKey key = {0x89abcdef, 0x01234567};
  for (const std::uint32_t token_id : {0u, 1u, 3u, 4u, 128255u}) {
    const PhiloxCounter words = philox4x32_10({token_id / 4, 0, 7, 5}, key);
    CHECK(sampling_random_word(seed, step, token_id) == words[token_id % 4]);
    CHECK(sampling_uniform(seed, step, token_id) == (words[token_id % 4] + 0.5) / 4294967296.0);
  }
  // Other streams do not reuse the draw's numbers.
  CHECK(sampling_random_word(seed, step, 9, 1) != sampling_random_word(seed, step, 9, 0));
}

TEST_CASE("sampling stream: uniform in (0, 1), distinct across seeds, steps and ids") {
  double sum = 0.0;
  std::set<std::uint32_t> words;
  const int draws = 100000;
  for (int i = 0; i < draws; ++i) {
    const double u = sampling_uniform(42, static_cast<std::uint64_t>(i), 17);
    REQUIRE(u > 0.0);
    REQUIRE(u < 1.0);
    sum += u;
    words.insert(sampling_random_word(42, static_cast<std::uint64_t>(i), 17));
  }
  CHECK(sum / draws == doctest::Approx(0.5).epsilon(0.01));
  CHECK(words.size() > static_cast<std::size_t>(draws) - 10);  // collisions in 2^32 are rare
  CHECK(sampling_random_word(1, 0, 0) != sampling_random_word(2, 0, 0));
  CHECK(sampling_random_word(1, 0, 0) != sampling_random_word(1, 1, 0));
  CHECK(sampling_random_word(1, 0, 0) != sampling_random_word(1, 0, 1));
  // The extremes stay finite through both logs.
  CHECK(std::isfinite(gumbel_from_word(0)));
  CHECK(std::isfinite(gumbel_from_word(0xffffffffu)));
}
