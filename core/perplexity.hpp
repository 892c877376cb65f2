// Perplexity of a model on a text, through the engine (`hostrun bench
// perplexity`; quantization's quality rows use the same function).
//
// The text's tokens are cut into windows the way HF's "perplexity of
// fixed-length models" guide and LMDeploy's evaluation do it: each window is
// BOS (when the model has one) and up to `context` - 1 tokens of text, the
// windows start `stride` tokens apart, and a window scores only the tokens no
// window before it scored, each from all the text before it in its window.
// So every token is scored once, the first window's from the start of the
// text, every later one with at least context - 1 - stride tokens before it.
// With no BOS the text's first token has nothing to be predicted from and is
// not scored, and stride must leave each window at least one token of context.
//
// Each window is one Engine::submit_score request (teacher forcing); several
// run at once, batched by the engine like any requests.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "engine/engine.hpp"

namespace hostrun::core {

struct PerplexityOptions {
  int32_t context = 512;          // tokens a window holds, BOS included
  int32_t stride = 0;             // tokens between window starts; 0: default_stride()
  std::optional<TokenId> bos;     // put before each window's text; none: the text alone
  int32_t max_in_flight = 64;     // windows submitted and not yet finished
};

// Half the context (512 -> 256, as HF's guide), at most what a window's text allows.
int32_t default_stride(const PerplexityOptions& options);

// Text tokens [begin, end) of one window; it scores [scored_begin, end).
struct ScoreWindow {
  int64_t begin = 0;
  int64_t scored_begin = 0;
  int64_t end = 0;
};

// The windows over `num_tokens` tokens of text; invalid_argument names the
// option that cannot work (context too small, stride out of range).
Result<std::vector<ScoreWindow>> plan_windows(int64_t num_tokens, const PerplexityOptions& options);

struct PerplexityResult {
  int64_t text_tokens = 0;
  int64_t scored_tokens = 0;
  int64_t windows = 0;
  int32_t stride = 0;          // as used
  double mean_nll = 0;         // natural log, per scored token
  double mean_nll_stderr = 0;  // the sample standard deviation of the per-token NLL over sqrt(n)
  double perplexity = 0;       // exp(mean_nll)
  double perplexity_stderr = 0;  // perplexity * mean_nll_stderr (first order, as llama.cpp reports it)
};

// Mean and standard error of per-token negative log-likelihoods. The error
// treats tokens as independent, which neighbours in a text are not: it says
// how much the figure moves with the sample, not a confidence interval.
PerplexityResult summarize_nll(std::span<const double> nll);

// Scores `tokens` through the engine. `progress` (optional) is called on
// this thread with tokens scored so far and the total. Fails with the first
// window's error (the others in flight are cancelled first).
using PerplexityProgress = std::function<void(int64_t scored, int64_t total)>;
Result<PerplexityResult> measure_perplexity(Engine& engine, std::span<const TokenId> tokens,
                                            const PerplexityOptions& options, const PerplexityProgress& progress = {});

}  // namespace hostrun::core
