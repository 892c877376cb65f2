// The counter-based RNG behind sampling, specified exactly so that a CUDA
// twin reproduces every random number bit for bit.
//
// Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel Random Numbers: As Easy
// as 1, 2, 3", SC'11; the Random123 definition, checked against its
// known-answer vectors in tests/test_rng.cpp):
//
//   state: counter c[4], key k[2], all uint32
//   round: (hi0, lo0) = 0xD2511F53 * c[0]   (full 64-bit product)
//          (hi1, lo1) = 0xCD9E8D57 * c[2]
//          c = { hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0 }
//   10 rounds; before every round but the first the key is bumped:
//          k[0] += 0x9E3779B9, k[1] += 0xBB67AE85   (mod 2^32)
//
// The sampling stream (one independent number per (seed, step, token id), so
// the draw does not depend on batching, thread layout or vocabulary order):
//
//   key     = { seed & 0xffffffff, seed >> 32 }
//   counter = { token_id / 4, stream, step & 0xffffffff, step >> 32 }
//   word    = philox4x32_10(counter, key)[token_id % 4]
//   u       = (word + 0.5) * 2^-32                 in (0, 1), exact in double
//   gumbel  = -log(-log(u))                        in double
//
// `step` is the index of the token being generated within its request (0 for
// the first generated token), so a request with a fixed seed yields the same
// tokens however it is batched or preempted. `stream` is 0 for the token draw;
// other values are reserved for other per-step decisions (e.g. speculative
// acceptance) so they never reuse the draw's numbers.
#pragma once

#include <array>
#include <cstdint>

namespace hostrun::ref {

using PhiloxCounter = std::array<std::uint32_t, 4>;
using PhiloxKey = std::array<std::uint32_t, 2>;

PhiloxCounter philox4x32_10(PhiloxCounter counter, PhiloxKey key);

inline constexpr std::uint32_t token_draw_stream = 0;

// The words of token ids 4*token_group .. 4*token_group+3 (one Philox call).
PhiloxCounter sampling_random_group(std::uint64_t seed, std::uint64_t step, std::uint32_t token_group,
                                    std::uint32_t stream = token_draw_stream);

// u and then -log(-log(u)) from one word, as specified above.
double uniform_from_word(std::uint32_t word);
double gumbel_from_word(std::uint32_t word);

// The uint32 word for (seed, step, token_id) in the given stream.
std::uint32_t sampling_random_word(std::uint64_t seed, std::uint64_t step, std::uint32_t token_id,
                                   std::uint32_t stream = token_draw_stream);

// u in (0, 1) from that word, as specified above.
double sampling_uniform(std::uint64_t seed, std::uint64_t step, std::uint32_t token_id);

// A standard Gumbel variate from that u: adding one to each log-weight and
// taking the argmax samples exactly from the softmax of the log-weights.
double sampling_gumbel(std::uint64_t seed, std::uint64_t step, std::uint32_t token_id);

}  // namespace hostrun::ref
