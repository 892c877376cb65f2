// How `bench perplexity` cuts a text into windows and sums up the scores
// (core/perplexity.hpp); the scoring itself is tested in tests/engine and
// against the dense oracle in tests/llama_cpu.
#include <doctest/doctest.h>

#include <cmath>

#include "perplexity.hpp"

using namespace hostrun;
using namespace hostrun::core;

namespace {

std::vector<ScoreWindow> windows(int64_t tokens, int32_t context, int32_t stride, bool bos) {
  PerplexityOptions options;
  options.context = context;
  options.stride = stride;
  if (bos) options.bos = 1;
  auto planned = plan_windows(tokens, options);
  REQUIRE_MESSAGE(planned.has_value(), planned.status().message());
  return *planned;
}

// Every scored token is scored once, in order, and its window holds at most
// `context` tokens with BOS.
void check_cover(const std::vector<ScoreWindow>& ws, int64_t tokens, int32_t context, bool bos) {
  int64_t next = bos ? 0 : 1;
  for (const ScoreWindow& w : ws) {
    CHECK(w.scored_begin == next);
    CHECK(w.begin <= w.scored_begin);
    CHECK(w.scored_begin < w.end);
    CHECK(w.end - w.begin + (bos ? 1 : 0) <= context);
    if (!bos) CHECK(w.begin < w.scored_begin);  // something to predict from
    next = w.end;
  }
  CHECK(next == tokens);
}

}  // namespace

TEST_CASE("perplexity windows: BOS plus context-1 tokens, starts stride apart, each token scored once") {
  // 10 tokens, context 5 (BOS + 4), stride 2: [0,4) all scored, then [2,6) scores 4..5, [4,8) 6..7, [6,10) 8..9.
  auto ws = windows(10, 5, 2, true);
  REQUIRE(ws.size() == 4);
  CHECK((ws[0].begin == 0 && ws[0].scored_begin == 0 && ws[0].end == 4));
  CHECK((ws[1].begin == 2 && ws[1].scored_begin == 4 && ws[1].end == 6));
  CHECK((ws[3].begin == 6 && ws[3].scored_begin == 8 && ws[3].end == 10));
  for (int64_t n : {1, 2, 7, 100, 1000})
    for (int32_t context : {2, 3, 8, 64})
      for (int32_t stride : {0, 1, 3, context - 1}) {
        if (stride > context - 1) continue;
        CAPTURE(n);
        CAPTURE(context);
        CAPTURE(stride);
        check_cover(windows(n, context, stride, true), n, context, true);
      }
}

TEST_CASE("perplexity windows without BOS: the first token is context only, and each window keeps one") {
  auto ws = windows(10, 4, 0, false);  // 4 text tokens a window, default stride 2
  CHECK((ws[0].begin == 0 && ws[0].scored_begin == 1 && ws[0].end == 4));
  check_cover(ws, 10, 4, false);
  for (int64_t n : {2, 9, 333})
    for (int32_t stride : {1, 2, 3}) check_cover(windows(n, 4, stride, false), n, 4, false);
}

TEST_CASE("perplexity windows: options that cannot work are named") {
  PerplexityOptions options;
  options.bos = 1;
  options.context = 1;
  CHECK(plan_windows(10, options).status().message().find("--context 1") != std::string::npos);
  options.context = 8;
  options.stride = 8;  // 7 text tokens a window
  CHECK(plan_windows(10, options).status().message().find("--stride 8: expected 1 to 7") != std::string::npos);
  options.bos.reset();  // 8 text tokens a window, the first unscored
  options.stride = 8;
  CHECK(plan_windows(10, options).status().message().find("--stride 8: expected 1 to 7") != std::string::npos);
  options.stride = 7;
  CHECK(plan_windows(10, options).has_value());
  options.stride = 0;
  CHECK(plan_windows(1, options).status().code() == ErrorCode::invalid_argument);  // one token, no BOS: nothing to score
  options.bos = 1;
  CHECK(plan_windows(0, options).status().code() == ErrorCode::invalid_argument);
  CHECK(default_stride(options) == 4);
}

TEST_CASE("perplexity summary: exp of the mean NLL, standard errors of the mean") {
  const std::vector<double> nll{1.0, 2.0, 3.0, 4.0};
  PerplexityResult r = summarize_nll(nll);
  CHECK(r.scored_tokens == 4);
  CHECK(r.mean_nll == doctest::Approx(2.5));
  CHECK(r.perplexity == doctest::Approx(std::exp(2.5)));
  // Sample variance 5/3; over n = 4.
  CHECK(r.mean_nll_stderr == doctest::Approx(std::sqrt(5.0 / 3.0 / 4.0)));
  CHECK(r.perplexity_stderr == doctest::Approx(std::exp(2.5) * std::sqrt(5.0 / 3.0 / 4.0)));
  CHECK(summarize_nll(std::vector<double>{0.5}).mean_nll_stderr == 0.0);
}
