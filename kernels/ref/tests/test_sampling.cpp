// Sampling: penalties by hand, greedy ties, filters by hand, reproducibility,
// and draw frequencies against the softmax they should follow.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "ref/sampling.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

namespace {

std::vector<std::int32_t> candidates(const std::vector<float>& logits, std::int32_t top_k, float top_p, float min_p) {
  std::vector<std::int32_t> ids(logits.size());
  ids.resize(filter_candidates(logits.data(), logits.size(), top_k, top_p, min_p, ids.data()));
  return ids;
}

std::vector<float> log_of(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (const double p : probs) logits.push_back(static_cast<float>(std::log(p)));
  return logits;
}

// Draws `draws` tokens with consecutive steps and checks each id's frequency
// against expected_probs within 5 standard deviations (plus a little slack).
void check_frequencies(const std::vector<float>& logits, const SamplingParams& params,
                       const std::vector<double>& expected_probs, int draws, bool vary_seed) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) {
    SamplingParams p = params;
    std::uint64_t step = static_cast<std::uint64_t>(i);
    if (vary_seed) {
      p.seed = 1000 + static_cast<std::uint64_t>(i);
      step = 3;
    }
    std::int32_t token = -1;
    REQUIRE(sample_token(logits.data(), logits.size(), p, {}, step, &token) == Status::ok);
    REQUIRE(token >= 0);
    REQUIRE(static_cast<std::size_t>(token) < logits.size());
    ++counts[token];
  }
  for (std::size_t id = 0; id < logits.size(); ++id) {
    const double p = expected_probs[id];
    const double frequency = static_cast<double>(counts[id]) / draws;
    const double sigma = std::sqrt(p * (1.0 - p) / draws);
    INFO("id " << id << ": frequency " << frequency << ", expected " << p);
    CHECK(std::fabs(frequency - p) <= 5.0 * sigma + 1e-3);
    if (p == 0.0) CHECK(counts[id] == 0);
  }
}

std::vector<double> softmax(const std::vector<float>& logits, double temperature, const std::vector<std::int32_t>& kept) {
  std::vector<double> probs(logits.size(), 0.0);
  double total = 0.0;
  for (const std::int32_t id : kept) total += probs[id] = std::exp(logits[id] / temperature);
  for (double& p : probs) p /= total;
  return probs;
}

}  // namespace

TEST_CASE("penalties by hand: repetition over prompt+generated, presence/frequency over generated") {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f, 3.0f};
  const std::vector<std::int32_t> prompt = {0, 1, 0};
  const std::vector<std::int32_t> generated = {2, 2, 0};
  SamplingParams params;
  params.repetition_penalty = 2.0f;
  params.presence_penalty = 0.5f;
  params.frequency_penalty = 0.25f;
  REQUIRE(apply_penalties(logits.data(), logits.size(), params, {prompt.data(), 3, generated.data(), 3}) == Status::ok);
  CHECK(logits[0] == 2.0f / 2 - 0.25f * 1 - 0.5f);  // in prompt twice and generated once: divided once
  CHECK(logits[1] == -2.0f * 2);                     // prompt only, negative: multiplied
  CHECK(logits[2] == 1.0f / 2 - 0.25f * 2 - 0.5f);  // generated twice
  CHECK(logits[3] == 0.5f);                          // never seen
  CHECK(logits[4] == 3.0f);
}

TEST_CASE("penalties: an id outside the vocabulary is reported and nothing changes") {
  std::vector<float> logits = {1.0f, 2.0f};
  const std::vector<std::int32_t> generated = {1, 2};
  SamplingParams params;
  params.repetition_penalty = 1.5f;
  CHECK(apply_penalties(logits.data(), 2, params, {nullptr, 0, generated.data(), 2}) == Status::token_id_out_of_range);
  CHECK(logits == std::vector<float>{1.0f, 2.0f});
  std::int32_t token = -1;
  CHECK(sample_token(logits.data(), 2, params, {nullptr, 0, generated.data(), 2}, 0, &token) ==
        Status::token_id_out_of_range);
}

TEST_CASE("greedy: temperature 0 takes the argmax, ties to the lowest id, after penalties") {
  const std::vector<float> logits = {1.0f, 3.0f, 3.0f, 2.0f};
  SamplingParams params;
  params.temperature = 0.0f;
  std::int32_t token = -1;
  REQUIRE(sample_token(logits.data(), logits.size(), params, {}, 0, &token) == Status::ok);
  CHECK(token == 1);
  CHECK(greedy_argmax(logits.data(), logits.size()) == 1);
  // Penalising id 1 hands the argmax to id 2.
  const std::vector<std::int32_t> generated = {1};
  params.repetition_penalty = 1.1f;
  REQUIRE(sample_token(logits.data(), logits.size(), params, {nullptr, 0, generated.data(), 1}, 0, &token) ==
          Status::ok);
  CHECK(token == 2);
}

TEST_CASE("filters by hand: top-k, top-p on the top-k-renormalised distribution, min-p") {
  const std::vector<float> logits = log_of({0.5, 0.3, 0.15, 0.05});
  CHECK(candidates(logits, 0, 1.0f, 0.0f) == std::vector<std::int32_t>{0, 1, 2, 3});
  CHECK(candidates(logits, 2, 1.0f, 0.0f) == std::vector<std::int32_t>{0, 1});
  CHECK(candidates(logits, 10, 1.0f, 0.0f) == std::vector<std::int32_t>{0, 1, 2, 3});  // k >= vocab: off
  CHECK(candidates(logits, 0, 0.75f, 0.0f) == std::vector<std::int32_t>{0, 1});        // 0.5 < 0.75 <= 0.8
  CHECK(candidates(logits, 0, 0.81f, 0.0f) == std::vector<std::int32_t>{0, 1, 2});     // 0.8 < 0.81 <= 0.95
  CHECK(candidates(logits, 0, 1e-6f, 0.0f) == std::vector<std::int32_t>{0});
  // top-p 0.83 keeps 3 of the original distribution (0.5, 0.8, 0.95), but after
  // top-k 3 renormalises to (0.526, 0.842, 1) it keeps 2.
  CHECK(candidates(logits, 0, 0.83f, 0.0f) == std::vector<std::int32_t>{0, 1, 2});
  CHECK(candidates(logits, 3, 0.83f, 0.0f) == std::vector<std::int32_t>{0, 1});
  // min-p 0.2: threshold 0.2 * 0.5 = 0.1 drops only the 0.05.
  CHECK(candidates(logits, 0, 1.0f, 0.2f) == std::vector<std::int32_t>{0, 1, 2});
  CHECK(candidates(logits, 0, 1.0f, 0.7f) == std::vector<std::int32_t>{0});  // 0.35 > 0.3
  CHECK(candidates(logits, 0, 1.0f, 2.0f) == std::vector<std::int32_t>{0});  // never empty
  // Ties at the top-k boundary go to the lower id, and the output is id-ordered.
  const std::vector<float> tied = {0.0f, 1.0f, 1.0f, 1.0f, -1.0f};
  CHECK(candidates(tied, 2, 1.0f, 0.0f) == std::vector<std::int32_t>{1, 2});
}

TEST_CASE("top-k 1 and tiny top-p equal greedy, whatever the seed") {
  std::mt19937 rng(81);
  for (int trial = 0; trial < 50; ++trial) {
    const std::vector<float> logits = random_floats(rng, 300, -5.0f, 5.0f);
    const std::int32_t greedy = greedy_argmax(logits.data(), logits.size());
    for (const bool use_top_k : {true, false}) {
      SamplingParams params;
      params.temperature = 1.3f;
      params.seed = static_cast<std::uint64_t>(trial);
      if (use_top_k) params.top_k = 1;
      else params.top_p = 1e-7f;
      std::int32_t token = -1;
      REQUIRE(sample_token(logits.data(), logits.size(), params, {}, static_cast<std::uint64_t>(trial) * 7, &token) ==
              Status::ok);
      CHECK(token == greedy);
    }
  }
}

TEST_CASE("the same seed and step give the same token; seeds and steps change it") {
  std::mt19937 rng(82);
  const std::vector<float> logits = random_floats(rng, 1000, -1.0f, 1.0f);  // flat: many plausible tokens
  SamplingParams params;
  params.seed = 1234;
  std::int32_t first = -1, again = -1;
  REQUIRE(sample_token(logits.data(), logits.size(), params, {}, 5, &first) == Status::ok);
  REQUIRE(sample_token(logits.data(), logits.size(), params, {}, 5, &again) == Status::ok);
  CHECK(first == again);
  std::set<std::int32_t> across_seeds, across_steps;
  for (std::uint64_t i = 0; i < 20; ++i) {
    SamplingParams other = params;
    other.seed = i;
    std::int32_t token = -1;
    REQUIRE(sample_token(logits.data(), logits.size(), other, {}, 5, &token) == Status::ok);
    across_seeds.insert(token);
    REQUIRE(sample_token(logits.data(), logits.size(), params, {}, i, &token) == Status::ok);
    across_steps.insert(token);
  }
  CHECK(across_seeds.size() > 10);
  CHECK(across_steps.size() > 10);
}

TEST_CASE("draw frequencies follow the softmax (over steps and over seeds)") {
  const std::vector<float> logits = {1.0f, 0.0f, 2.0f, -1.0f, 0.5f, 1.5f};
  const std::vector<std::int32_t> all = {0, 1, 2, 3, 4, 5};
  SamplingParams params;
  params.seed = 7;
  check_frequencies(logits, params, softmax(logits, 1.0, all), 40000, false);
  check_frequencies(logits, params, softmax(logits, 1.0, all), 20000, true);

  SUBCASE("with temperature and top-k: the renormalised top 3 of softmax(l / T)") {
    params.temperature = 0.7f;
    params.top_k = 3;
    check_frequencies(logits, params, softmax(logits, 0.7, {0, 2, 5}), 30000, false);
  }
  SUBCASE("with min-p: ids below min_p * max dropped, the rest renormalised") {
    params.min_p = 0.3f;  // keeps exp(l - 2) >= 0.3: l >= 2 + ln 0.3 = 0.796 -> ids 0, 2, 5
    check_frequencies(logits, params, softmax(logits, 1.0, {0, 2, 5}), 30000, false);
  }
  SUBCASE("with top-p") {
    // probs (sorted): 0.420 (2), 0.255 (5), 0.154 (0), 0.094 (4), ...; cumulative 0.420, 0.674,
    // 0.829: top-p 0.7 keeps 2, 5, 0.
    params.top_p = 0.7f;
    check_frequencies(logits, params, softmax(logits, 1.0, {0, 2, 5}), 30000, false);
  }
}

TEST_CASE("filters match a naive full-sort implementation on large random vocabularies") {
  // Naive: sort every id by (prob desc, id asc), renormalise after top-k,
  // walk the cumulative sum for top-p, then apply min-p to what is left.
  const auto naive = [](const std::vector<float>& logits, std::int32_t top_k, float top_p, float min_p) {
    std::vector<std::int32_t> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b]; });
    if (top_k > 0 && static_cast<std::size_t>(top_k) < order.size()) order.resize(static_cast<std::size_t>(top_k));
    long double total = 0.0L;
    for (const std::int32_t id : order) total += std::exp(static_cast<long double>(logits[id]) - logits[order[0]]);
    if (top_p < 1.0f) {
      long double cumulative = 0.0L;
      std::size_t keep = 0;
      while (keep < order.size() && cumulative < top_p) {
        cumulative += std::exp(static_cast<long double>(logits[order[keep]]) - logits[order[0]]) / total;
        ++keep;
      }
      order.resize(keep);
    }
    if (min_p > 0.0f) {
      const float max_logit = logits[order[0]];
      std::erase_if(order, [&](std::int32_t id) { return std::exp(static_cast<long double>(logits[id]) - max_logit) < min_p; });
    }
    std::sort(order.begin(), order.end());
    return order;
  };
  std::mt19937 rng(83);
  for (const std::size_t vocab : {300u, 5000u, 50000u}) {
    for (const float spread : {2.0f, 8.0f, 20.0f}) {  // flat to peaked: nuclei of every size
      const std::vector<float> logits = random_floats(rng, vocab, -spread, spread);
      for (const std::int32_t top_k : {0, 1, 40, 4000}) {
        for (const float top_p : {1.0f, 0.95f, 0.5f, 0.1f}) {
          for (const float min_p : {0.0f, 0.05f}) {
            CAPTURE(vocab);
            CAPTURE(spread);
            CAPTURE(top_k);
            CAPTURE(top_p);
            CAPTURE(min_p);
            REQUIRE(candidates(logits, top_k, top_p, min_p) == naive(logits, top_k, top_p, min_p));
          }
        }
      }
    }
  }
}
