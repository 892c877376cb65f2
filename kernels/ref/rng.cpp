#include "ref/rng.hpp"

#include <cmath>

namespace hostrun::ref {

namespace {

constexpr std::uint32_t philox_multiplier_0 = 0xD2511F53u;
constexpr std::uint32_t philox_multiplier_1 = 0xCD9E8D57u;
constexpr std::uint32_t philox_key_bump_0 = 0x9E3779B9u;  // golden ratio
constexpr std::uint32_t philox_key_bump_1 = 0xBB67AE85u;  // sqrt(3) - 1

PhiloxCounter philox_round(const PhiloxCounter& c, const PhiloxKey& k) {
  const std::uint64_t product0 = static_cast<std::uint64_t>(philox_multiplier_0) * c[0];
  const std::uint64_t product1 = static_cast<std::uint64_t>(philox_multiplier_1) * c[2];
  const auto hi0 = static_cast<std::uint32_t>(product0 >> 32);
  const auto lo0 = static_cast<std::uint32_t>(product0);
  const auto hi1 = static_cast<std::uint32_t>(product1 >> 32);
  const auto lo1 = static_cast<std::uint32_t>(product1);
  return {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
}

}  // namespace

PhiloxCounter philox4x32_10(PhiloxCounter counter, PhiloxKey key) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      key[0] += philox_key_bump_0;
      key[1] += philox_key_bump_1;
    }
    counter = philox_round(counter, key);
  }
  return counter;
}

PhiloxCounter sampling_random_group(std::uint64_t seed, std::uint64_t step, std::uint32_t token_group,
                                    std::uint32_t stream) {
  const PhiloxKey key = {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)};
  const PhiloxCounter counter = {token_group, stream, static_cast<std::uint32_t>(step),
                                 static_cast<std::uint32_t>(step >> 32)};
  return philox4x32_10(counter, key);
}

double uniform_from_word(std::uint32_t word) {
  // word + 0.5 needs 33 significant bits: exact in double, never 0 or 1, so
  // both logs below are finite.
  return (static_cast<double>(word) + 0.5) * 0x1p-32;
}

double gumbel_from_word(std::uint32_t word) { return -std::log(-std::log(uniform_from_word(word))); }

std::uint32_t sampling_random_word(std::uint64_t seed, std::uint64_t step, std::uint32_t token_id,
                                   std::uint32_t stream) {
  return sampling_random_group(seed, step, token_id / 4, stream)[token_id % 4];
}

double sampling_uniform(std::uint64_t seed, std::uint64_t step, std::uint32_t token_id) {
  return uniform_from_word(sampling_random_word(seed, step, token_id));
}

double sampling_gumbel(std::uint64_t seed, std::uint64_t step, std::uint32_t token_id) {
  return gumbel_from_word(sampling_random_word(seed, step, token_id));
}

}  // namespace hostrun::ref
