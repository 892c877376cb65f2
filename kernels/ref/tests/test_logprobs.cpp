#include <cmath>

#include "ref/logprobs.hpp"
#include "tests/helpers.hpp"

using namespace hostrun::ref;
using namespace hostrun::ref::test;

TEST_CASE("log_softmax matches log(exp(l) / sum exp) and is stable for large logits") {
  std::mt19937 rng(91);
  for (const std::size_t vocab : {1u, 7u, 1000u, 128256u}) {
    const std::vector<float> logits = random_floats(rng, vocab, -10.0f, 10.0f);
    std::vector<float> logprobs(vocab);
    log_softmax(logits.data(), vocab, logprobs.data());
    long double total = 0.0L;
    for (const float l : logits) total += std::exp(static_cast<long double>(l));
    std::vector<double> expected;
    for (const float l : logits) expected.push_back(static_cast<double>(std::log(std::exp(static_cast<long double>(l)) / total)));
    check_close(logprobs, expected, 1e-5, 1e-6);
  }
  // exp(1000) overflows f32 and double; the max shift keeps this exact.
  const std::vector<float> large = {1000.0f, 999.0f};
  std::vector<float> logprobs(2);
  log_softmax(large.data(), 2, logprobs.data());
  CHECK(logprobs[0] == doctest::Approx(-std::log1p(std::exp(-1.0))));  // -0.3132617
  CHECK(logprobs[1] == doctest::Approx(-1.0 - std::log1p(std::exp(-1.0))));
}

TEST_CASE("token_logprobs: chosen token, its rank, and the top n in order with ties to the lower id") {
  const std::vector<float> logits = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};
  std::vector<float> all(5);
  log_softmax(logits.data(), 5, all.data());
  TokenLogprob chosen;
  std::size_t rank = 0;
  std::vector<TokenLogprob> top(3);
  REQUIRE(token_logprobs(logits.data(), 5, 2, 3, &chosen, &rank, top.data()) == Status::ok);
  CHECK(chosen.token_id == 2);
  CHECK(chosen.logprob == doctest::Approx(all[2]));
  CHECK(rank == 3);  // ids 1 and 3 are strictly more likely
  CHECK(top[0].token_id == 1);
  CHECK(top[1].token_id == 3);
  CHECK(top[2].token_id == 2);
  CHECK(top[0].logprob == doctest::Approx(all[1]));
  CHECK(top[2].logprob == doctest::Approx(all[2]));
  // sum of exp(logprob) is 1.
  double total = 0.0;
  for (const float lp : all) total += std::exp(lp);
  CHECK(total == doctest::Approx(1.0).epsilon(1e-6));

  REQUIRE(token_logprobs(logits.data(), 5, 3, 0, &chosen, &rank, nullptr) == Status::ok);
  CHECK(rank == 1);  // tied for first
  CHECK(token_logprobs(logits.data(), 5, 5, 0, &chosen, &rank, nullptr) == Status::token_id_out_of_range);
  CHECK(token_logprobs(logits.data(), 5, 0, 6, &chosen, &rank, top.data()) == Status::invalid_argument);
}
