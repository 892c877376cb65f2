#include "perplexity.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <mutex>

namespace hostrun::core {

int32_t default_stride(const PerplexityOptions& options) {
  const int32_t text_per_window = options.context - (options.bos ? 1 : 0);
  const int32_t max_stride = options.bos ? text_per_window : text_per_window - 1;
  return std::clamp(options.context / 2, 1, std::max(max_stride, 1));
}

Result<std::vector<ScoreWindow>> plan_windows(int64_t num_tokens, const PerplexityOptions& options) {
  const bool bos = options.bos.has_value();
  const int64_t text_per_window = int64_t(options.context) - (bos ? 1 : 0);
  // Without BOS a window's first token is context only, so it needs two.
  const int64_t least = bos ? 1 : 2;
  if (text_per_window < least)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--context {}: a window needs at least {} tokens ({})", options.context,
                              least + (bos ? 1 : 0), bos ? "BOS and one of text" : "one to predict from and one to score"));
  const int64_t max_stride = bos ? text_per_window : text_per_window - 1;
  const int64_t stride = options.stride > 0 ? options.stride : default_stride(options);
  if (options.stride < 0 || stride > max_stride)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--stride {}: expected 1 to {} (the text tokens a window of {} holds{})", options.stride,
                              max_stride, options.context,
                              bos ? ", after BOS" : ", less one: with no BOS a window starts with one unscored token"));
  if (num_tokens < least)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("the text has {} token(s); at least {} needed to score one", num_tokens, least));
  std::vector<ScoreWindow> windows;
  int64_t scored_end = bos ? 0 : 1;
  for (int64_t begin = 0;; begin += stride) {
    const int64_t end = std::min(begin + text_per_window, num_tokens);
    windows.push_back({begin, scored_end, end});
    scored_end = end;
    if (end == num_tokens) break;
  }
  return windows;
}

PerplexityResult summarize_nll(std::span<const double> nll) {
  PerplexityResult r;
  r.scored_tokens = int64_t(nll.size());
  if (nll.empty()) return r;
  double sum = 0;
  for (double x : nll) sum += x;
  r.mean_nll = sum / double(nll.size());
  double squares = 0;
  for (double x : nll) squares += (x - r.mean_nll) * (x - r.mean_nll);
  if (nll.size() > 1) r.mean_nll_stderr = std::sqrt(squares / double(nll.size() - 1) / double(nll.size()));
  r.perplexity = std::exp(r.mean_nll);
  r.perplexity_stderr = r.perplexity * r.mean_nll_stderr;
  return r;
}

namespace {

// What the engine's callbacks share with the submitting thread.
struct Collector {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<double> nll;  // by text position; filled as targets come back
  int64_t scored = 0;
  int64_t finished = 0;
  Status failure;
};

// One window's events: its targets' log-probabilities, in order from text position `first`.
StreamCallback on_event(Collector& collector, int64_t first) {
  return [&collector, first, received = int64_t(0)](const StreamEvent& e) mutable {
    std::lock_guard guard(collector.mutex);
    for (const TokenLogprob& lp : e.logprobs) collector.nll[size_t(first + received++)] = -double(lp.logprob);
    collector.scored += int64_t(e.logprobs.size());
    if (e.finish == FinishReason::none) return;
    if (e.finish != FinishReason::length && collector.failure.is_ok())
      collector.failure = Status(e.error_code == ErrorCode::ok ? ErrorCode::internal : e.error_code,
                                 fmt::format("the window scoring from token {}: {}", first,
                                             e.error.empty() ? finish_reason_name(e.finish) : e.error));
    ++collector.finished;
    collector.changed.notify_all();
  };
}

}  // namespace

Result<PerplexityResult> measure_perplexity(Engine& engine, std::span<const TokenId> tokens,
                                            const PerplexityOptions& options, const PerplexityProgress& progress) {
  auto windows = plan_windows(int64_t(tokens.size()), options);
  if (!windows) return windows.status();
  const int32_t session_len = engine.info().session_len;
  if (options.context > session_len)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--context {} is over the session length of {} (raise --session-len)", options.context,
                              session_len));
  const int64_t total = int64_t(tokens.size()) - windows->front().scored_begin;
  Collector collector;
  collector.nll.assign(tokens.size(), 0.0);
  std::vector<uint64_t> submitted;
  const int64_t max_in_flight = std::max(1, options.max_in_flight);
  size_t next = 0;
  std::unique_lock lock(collector.mutex);
  auto report = [&] {
    if (!progress) return;
    const int64_t scored = collector.scored;
    lock.unlock();
    progress(scored, total);
    lock.lock();
  };
  bool stopped = false;  // a window failed: nothing more is submitted
  for (;;) {
    while (!stopped && next < windows->size() && int64_t(next) - collector.finished < max_in_flight) {
      const ScoreWindow& w = (*windows)[next];
      ScoreRequest request;
      if (options.bos) request.context.push_back(*options.bos);
      request.context.insert(request.context.end(), tokens.begin() + w.begin, tokens.begin() + w.scored_begin);
      request.targets.assign(tokens.begin() + w.scored_begin, tokens.begin() + w.end);
      lock.unlock();
      auto id = engine.submit_score(std::move(request), on_event(collector, w.scored_begin));
      lock.lock();
      if (!id) {
        if (collector.failure.is_ok()) collector.failure = id.status();
        break;
      }
      submitted.push_back(*id);
      ++next;
    }
    if (!stopped && !collector.failure.is_ok()) {
      stopped = true;
      for (uint64_t id : submitted) engine.cancel(id);  // a finished one ignores it
    }
    if (collector.finished == int64_t(next) && (stopped || next == windows->size())) break;
    collector.changed.wait_for(lock, std::chrono::milliseconds(200));
    report();
  }
  report();
  if (!collector.failure.is_ok()) return collector.failure;
  const size_t first_scored = size_t(windows->front().scored_begin);
  PerplexityResult result = summarize_nll(std::span<const double>(collector.nll).subspan(first_scored));
  result.text_tokens = int64_t(tokens.size());
  result.windows = int64_t(windows->size());
  result.stride = options.stride > 0 ? options.stride : default_stride(options);
  return result;
}

}  // namespace hostrun::core
