// `hostrun bench throughput MODEL_DIR` and `hostrun bench latency MODEL_DIR`:
// the model on the local engine (core::Runtime), no HTTP in between.
//
// throughput is the seed's profile_throughput (LMDeploy's): N requests with
// the workload's (input_len, output_len) pairs, C in flight at once; each
// prompt is exactly input_len random token ids and each reply exactly
// output_len tokens (ignore_eos, max_tokens = min_tokens = output_len).
// Reported: the weights' bytes on the model's device and the KV cache (format,
// blocks), first-token latency min/max/avg, per-token latency percentiles
// (the gaps between a request's streamed tokens; a delivery of k tokens counts
// as k gaps of 1/k of it), prompt and completion tokens, token throughput
// (completion, total), requests per second and per minute.
//
// latency is batch 1: time to first token and decode tokens/s of one request
// at a time, best and mean of --runs after one warm-up.
//
// With --image (models with a vision encoder) each prompt becomes one user
// chat message carrying --images-per-request copies of the file, whose text
// is the random ids decoded: the chat template and re-tokenizing make its
// length about input_len rather than exactly, so the engine's prompt tokens
// (each image expanded to the encoder's tokens per image) are what is
// reported. Every request's images are encoded (the prefix cache, off unless
// --enable-prefix-caching, would share the same image's blocks).
//
// Requests are submitted from this thread; the engine's callback only
// records times and wakes it (it must not call back into the engine).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "bench_runtime.hpp"
#include "image_file.hpp"

namespace hostrun::cli {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct Workload {
  int32_t input_len = 0;
  int32_t output_len = 0;
};

struct CommonOptions {
  BenchModelFlags model;
  uint64_t seed = 1;
  double temperature = 0.0;
  double top_p = 1.0;
  int64_t top_k = 0;
  std::string output;
  bool no_progress = false;
  std::string image;
  int64_t images_per_request = 1;
};

struct ThroughputOptions {
  CommonOptions common;
  std::string dataset;
  int64_t num_prompts = 1000;
  int64_t concurrency = 256;
  int64_t input_len = 128;
  int64_t output_len = 128;
};

struct LatencyOptions {
  CommonOptions common;
  int64_t input_len = 128;
  int64_t output_len = 128;
  int64_t runs = 3;
};

void add_common(CLI::App* cmd, CommonOptions& o) {
  o.model.add_to(cmd);
  cmd->add_option("--seed", o.seed, "Seed of the random prompts and of sampling")->capture_default_str();
  cmd->add_option("--temperature", o.temperature, "Sampling temperature (0: greedy)")->capture_default_str();
  cmd->add_option("--top-p", o.top_p, "Top-p")->capture_default_str();
  cmd->add_option("--top-k", o.top_k, "Top-k (0: off)")->capture_default_str();
  cmd->add_option("--output", o.output, "Write the results as JSON to this file");
  cmd->add_flag("--no-progress", o.no_progress, "No progress bar on stderr");
  cmd->add_option("--image", o.image, "Attach this image (PNG, JPEG, WebP, GIF) to every prompt, sent as a chat message");
  cmd->add_option("--images-per-request", o.images_per_request, "Copies of --image in each prompt")
      ->capture_default_str();
}

// The images every prompt carries (none without --image).
Result<std::vector<ImageData>> bench_images(const CommonOptions& o) {
  if (o.image.empty()) return std::vector<ImageData>{};
  if (o.images_per_request < 1) return Status(ErrorCode::invalid_argument, "--images-per-request must be positive");
  auto image = core::read_image_file(o.image);
  if (!image) return Status(image.status().code(), fmt::format("--image {}", image.status().message()));
  return std::vector<ImageData>(size_t(o.images_per_request), *image);
}

// The request's input: the ids as they are, or with images a chat message of their text.
Result<decltype(GenerationRequest::input)> prompt_input(std::vector<TokenId> ids, const Tokenizer& tokenizer,
                                                        const std::vector<ImageData>& images) {
  if (images.empty()) return decltype(GenerationRequest::input)(std::move(ids));
  std::string text;
  if (Status s = tokenizer.decode(ids, {}, text); !s) return s;
  return decltype(GenerationRequest::input)(std::vector<ChatMessage>{{"user", std::move(text), images}});
}

Result<std::vector<Workload>> read_dataset(const std::string& path, int64_t limit) {
  std::ifstream in(path);
  if (!in) return Status(ErrorCode::io_error, fmt::format("--dataset {}: cannot open", path));
  std::vector<Workload> rows;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line) && int64_t(rows.size()) < limit) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    if (line_number == 1 && !std::isdigit(static_cast<unsigned char>(line[0]))) continue;  // header
    Workload w;
    char comma = 0;
    std::istringstream fields(line);
    if (!(fields >> w.input_len >> comma >> w.output_len) || comma != ',' || w.input_len < 1 || w.output_len < 1)
      return Status(ErrorCode::invalid_argument,
                    fmt::format("--dataset {}:{}: expected 'input_len,output_len' (positive integers), found '{}'",
                                path, line_number, line));
    rows.push_back(w);
  }
  if (rows.empty()) return Status(ErrorCode::invalid_argument, fmt::format("--dataset {}: no rows", path));
  return rows;
}

// Prompt ids drawn from the tokenizer's ordinary tokens (special ids are left out).
std::vector<TokenId> random_prompt(std::mt19937_64& rng, int32_t length, const Tokenizer& tokenizer, int32_t vocab) {
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<TokenId> ids(static_cast<size_t>(length));
  for (auto& id : ids) {
    do id = pick(rng);
    while (tokenizer.is_special(id));
  }
  return ids;
}

// Ids both the tokenizer and the model know.
int32_t prompt_vocab(const core::Runtime& runtime, const Tokenizer& tokenizer) {
  return std::min<int32_t>(tokenizer.vocab_size(), runtime.model_info().vocab_size);
}

SamplingParams sampling_for(const CommonOptions& o, int32_t output_len, uint64_t seed) {
  SamplingParams sp;
  sp.temperature = float(o.temperature);
  sp.top_p = float(o.top_p);
  sp.top_k = int32_t(o.top_k);
  sp.max_tokens = output_len;
  sp.min_tokens = output_len;
  sp.ignore_eos = true;
  sp.seed = seed;
  return sp;
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const double rank = p / 100.0 * double(sorted.size() - 1);
  const size_t lo = size_t(rank);
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - double(lo));
}

void draw_progress(const char* what, size_t done, size_t total, double seconds) {
  const int width = 40;
  const int filled = total ? int(double(done) / double(total) * width) : width;
  fmt::print(stderr, "\r{} [{}{}] {}/{} {:.1f} s", what, std::string(size_t(filled), '='),
             std::string(size_t(width - filled), ' '), done, total, seconds);
}

// What one request saw.
struct RequestTrace {
  Clock::time_point submitted;
  Clock::time_point last;
  double first_token_s = -1;
  std::vector<double> token_gaps_s;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  int32_t streamed_tokens = 0;
  FinishReason finish = FinishReason::none;
  std::string error;
};

class Tracker {
 public:
  explicit Tracker(size_t n) : traces_(n) {}
  StreamCallback callback(size_t index) {
    return [this, index](const StreamEvent& event) {
      const auto now = Clock::now();
      std::lock_guard lock(mutex_);
      RequestTrace& t = traces_[index];
      const size_t k = event.token_ids.size();
      if (k > 0) {
        const double gap = std::chrono::duration<double>(now - t.last).count();
        if (t.first_token_s < 0) {
          t.first_token_s = std::chrono::duration<double>(now - t.submitted).count();
          for (size_t i = 1; i < k; ++i) t.token_gaps_s.push_back(0.0);
        } else {
          for (size_t i = 0; i < k; ++i) t.token_gaps_s.push_back(gap / double(k));
        }
        t.last = now;
        t.streamed_tokens += int32_t(k);
      }
      if (event.finish != FinishReason::none) {
        t.finish = event.finish;
        t.error = event.error;
        t.prompt_tokens = event.prompt_tokens;
        t.completion_tokens = event.completion_tokens;
        ++finished_;
        cv_.notify_all();
      }
    };
  }
  void mark_submitted(size_t index) {
    std::lock_guard lock(mutex_);
    traces_[index].submitted = traces_[index].last = Clock::now();
  }
  void mark_failed(size_t index, std::string error) {
    std::lock_guard lock(mutex_);
    traces_[index].finish = FinishReason::error;
    traces_[index].error = std::move(error);
    ++finished_;
  }
  // Waits until more than `finished` requests are done, or the timeout passes.
  size_t wait_beyond(size_t finished, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, timeout, [&] { return finished_ > finished; });
    return finished_;
  }
  std::vector<RequestTrace> take() {
    std::lock_guard lock(mutex_);
    return traces_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<RequestTrace> traces_;
  size_t finished_ = 0;
};

int run_throughput(const ThroughputOptions& o, const GlobalOptions& global) {
  if (o.num_prompts < 1 || o.concurrency < 1) {
    fmt::print(stderr, "hostrun bench throughput: --num-prompts and --concurrency must be positive\n");
    return 2;
  }
  std::vector<Workload> workload;
  if (!o.dataset.empty()) {
    auto rows = read_dataset(o.dataset, o.num_prompts);
    if (!rows) {
      fmt::print(stderr, "hostrun bench throughput: {}\n", rows.status().message());
      return 2;
    }
    workload = std::move(rows.value());
  } else {
    workload.assign(size_t(o.num_prompts), Workload{int32_t(o.input_len), int32_t(o.output_len)});
  }
  auto images = bench_images(o.common);
  if (!images) {
    fmt::print(stderr, "hostrun bench throughput: {}\n", images.status().message());
    return 2;
  }
  int exit_code = 0;
  auto runtime = open_bench_runtime(o.common.model, global, "throughput", exit_code);
  if (!runtime) return exit_code;
  core::Engine& engine = runtime->engine();
  const Tokenizer& tokenizer = *engine.tokenizer();
  const int32_t vocab = prompt_vocab(*runtime, tokenizer);

  // Prompts made before the clock starts.
  std::mt19937_64 rng(o.common.seed);
  std::vector<decltype(GenerationRequest::input)> prompts;
  prompts.reserve(workload.size());
  for (const Workload& w : workload) {
    auto input = prompt_input(random_prompt(rng, w.input_len, tokenizer, vocab), tokenizer, *images);
    if (!input) {
      fmt::print(stderr, "hostrun bench throughput: {}\n", input.status().message());
      return 1;
    }
    prompts.push_back(std::move(*input));
  }

  const size_t n = workload.size();
  Tracker tracker(n);
  const bool progress = !o.common.no_progress;
  const auto start = Clock::now();
  size_t next = 0, finished = 0;
  auto last_draw = start - std::chrono::seconds(1);
  while (finished < n) {
    while (next < n && next - finished < size_t(o.concurrency)) {
      GenerationRequest request;
      request.input = std::move(prompts[next]);
      request.sampling = sampling_for(o.common, workload[next].output_len, o.common.seed + next);
      tracker.mark_submitted(next);
      auto id = engine.submit(std::move(request), tracker.callback(next));
      if (!id) tracker.mark_failed(next, id.status().message());
      ++next;
    }
    finished = tracker.wait_beyond(finished, std::chrono::milliseconds(200));
    const auto now = Clock::now();
    if (progress && (now - last_draw > std::chrono::milliseconds(200) || finished == n)) {
      draw_progress("requests", finished, n, std::chrono::duration<double>(now - start).count());
      last_draw = now;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (progress) fmt::print(stderr, "\n");

  const std::vector<RequestTrace> traces = tracker.take();
  std::vector<double> first_token, gaps;
  int64_t prompt_tokens = 0, completion_tokens = 0, failed = 0, short_replies = 0;
  std::string first_error;
  for (size_t i = 0; i < n; ++i) {
    const RequestTrace& t = traces[i];
    if (t.finish == FinishReason::error || t.finish == FinishReason::cancelled) {
      ++failed;
      if (first_error.empty()) first_error = t.error;
      continue;
    }
    prompt_tokens += t.prompt_tokens;
    completion_tokens += t.completion_tokens;
    if (t.completion_tokens != workload[i].output_len) ++short_replies;
    if (t.first_token_s >= 0) first_token.push_back(t.first_token_s);
    gaps.insert(gaps.end(), t.token_gaps_s.begin(), t.token_gaps_s.end());
  }
  std::sort(first_token.begin(), first_token.end());
  std::sort(gaps.begin(), gaps.end());
  const double ft_avg =
      first_token.empty() ? 0.0 : std::accumulate(first_token.begin(), first_token.end(), 0.0) / double(first_token.size());
  const int64_t ok = int64_t(n) - failed;
  json j;
  j["command"] = "bench throughput";
  j["engine"] = engine_json(*runtime, o.common.model.engine);
  j["dataset"] = o.dataset;
  j["num_prompts"] = n;
  j["concurrency"] = o.concurrency;
  j["image"] = o.common.image;
  j["images_per_request"] = images->size();
  j["elapsed_s"] = elapsed;
  j["completed"] = ok;
  j["failed"] = failed;
  j["replies_not_output_len"] = short_replies;
  j["first_token_latency_s"] = {{"min", first_token.empty() ? 0.0 : first_token.front()},
                                {"max", first_token.empty() ? 0.0 : first_token.back()},
                                {"avg", ft_avg}};
  j["per_token_latency_s"] = {{"p50", percentile(gaps, 50)}, {"p75", percentile(gaps, 75)},
                              {"p95", percentile(gaps, 95)}, {"p99", percentile(gaps, 99)}};
  j["prompt_tokens"] = prompt_tokens;
  j["completion_tokens"] = completion_tokens;
  j["completion_token_throughput"] = double(completion_tokens) / elapsed;
  j["total_token_throughput"] = double(prompt_tokens + completion_tokens) / elapsed;
  j["rps"] = double(ok) / elapsed;
  j["rpm"] = double(ok) / elapsed * 60.0;
  const core::EngineStats stats = engine.stats();
  j["engine_stats"] = engine_stats_json(stats);

  fmt::print("hostrun bench throughput: {} ({}), {} prompts, concurrency {}{}\n", runtime->model_dir(),
             runtime->manifest_name(), n, o.concurrency,
             images->empty() ? "" : fmt::format(", {} image(s) per prompt", images->size()));
  fmt::print("--------------------------------------------------\n");
  fmt::print("{:<36}{:.1f} MiB\n", "weights", double(runtime->model_info().weight_bytes) / (1 << 20));
  fmt::print("{:<36}{}, {} blocks\n", "KV cache", runtime->kv_format().name, engine.counters().kv_blocks_total);
  fmt::print("{:<36}{:.3f}\n", "elapsed time (s)", elapsed);
  fmt::print("{:<36}{}\n", "completed / failed requests", fmt::format("{} / {}", ok, failed));
  fmt::print("{:<36}{:.3f}  {:.3f}  {:.3f}\n", "first token latency min/max/avg (s)",
             first_token.empty() ? 0.0 : first_token.front(), first_token.empty() ? 0.0 : first_token.back(), ft_avg);
  fmt::print("{:<36}{:.4f}  {:.4f}  {:.4f}  {:.4f}\n", "per-token latency p50/75/95/99 (s)", percentile(gaps, 50),
             percentile(gaps, 75), percentile(gaps, 95), percentile(gaps, 99));
  fmt::print("{:<36}{}\n", "number of prompt tokens", prompt_tokens);
  if (!images->empty()) fmt::print("{:<36}{}\n", "images encoded", stats.images_encoded);
  fmt::print("{:<36}{}\n", "number of completion tokens", completion_tokens);
  fmt::print("{:<36}{:.1f}\n", "token throughput (completion, tok/s)", double(completion_tokens) / elapsed);
  fmt::print("{:<36}{:.1f}\n", "token throughput (total, tok/s)", double(prompt_tokens + completion_tokens) / elapsed);
  fmt::print("{:<36}{:.3f}\n", "RPS (requests/s)", double(ok) / elapsed);
  fmt::print("{:<36}{:.1f}\n", "RPM (requests/min)", double(ok) / elapsed * 60.0);
  fmt::print("{:<36}{} ({} overlapped, {} preemptions)\n", "engine steps", stats.steps, stats.overlapped_steps,
             stats.preemptions);
  // Where the model's rows are: the steps that carry prompt tokens (prefill
  // chunks beside decodes) against those that only decode.
  const uint64_t decode_steps = stats.steps - stats.prefill_steps;
  const uint64_t decode_step_tokens =
      stats.prefill_tokens_computed + stats.decode_tokens_computed - stats.prefill_step_tokens;
  fmt::print("{:<36}{} with prompt tokens ({:.1f} tokens each), {} decode only ({:.1f} rows each)\n", "  of which",
             stats.prefill_steps,
             stats.prefill_steps ? double(stats.prefill_step_tokens) / double(stats.prefill_steps) : 0.0,
             decode_steps, decode_steps ? double(decode_step_tokens) / double(decode_steps) : 0.0);
  fmt::print("{:<36}{:.3f}  {:.3f}\n", "engine time in model / scheduling (s)", stats.model_step_seconds,
             stats.scheduling_seconds);
  fmt::print("--------------------------------------------------\n");
  if (failed) fmt::print(stderr, "hostrun bench throughput: {} requests failed; the first: {}\n", failed, first_error);
  if (short_replies)
    fmt::print(stderr, "hostrun bench throughput: {} replies did not have exactly output_len tokens\n", short_replies);
  if (int rc = write_json(o.common.output, j, "throughput"); rc) return rc;
  return failed ? 1 : 0;
}

int run_latency(const LatencyOptions& o, const GlobalOptions& global) {
  if (o.input_len < 1 || o.output_len < 2 || o.runs < 1) {
    fmt::print(stderr, "hostrun bench latency: expected --input-len >= 1, --output-len >= 2, --runs >= 1\n");
    return 2;
  }
  auto images = bench_images(o.common);
  if (!images) {
    fmt::print(stderr, "hostrun bench latency: {}\n", images.status().message());
    return 2;
  }
  int exit_code = 0;
  auto runtime = open_bench_runtime(o.common.model, global, "latency", exit_code);
  if (!runtime) return exit_code;
  core::Engine& engine = runtime->engine();
  const Tokenizer& tokenizer = *engine.tokenizer();
  const int32_t vocab = prompt_vocab(*runtime, tokenizer);
  std::mt19937_64 rng(o.common.seed);

  std::vector<double> ttft, decode_rate, total_s;
  int32_t prompt_tokens = 0;
  const bool progress = !o.common.no_progress;
  const auto start = Clock::now();
  for (int64_t run = 0; run <= o.runs; ++run) {  // run 0 warms up (kernel loads, cuBLAS heuristics)
    Tracker tracker(1);
    GenerationRequest request;
    auto input = prompt_input(random_prompt(rng, int32_t(o.input_len), tokenizer, vocab), tokenizer, *images);
    if (!input) {
      fmt::print(stderr, "hostrun bench latency: {}\n", input.status().message());
      return 1;
    }
    request.input = std::move(*input);
    request.sampling = sampling_for(o.common, int32_t(o.output_len), o.common.seed + uint64_t(run));
    tracker.mark_submitted(0);
    auto id = engine.submit(std::move(request), tracker.callback(0));
    if (!id) {
      fmt::print(stderr, "hostrun bench latency: {}\n", id.status().message());
      return 1;
    }
    while (tracker.wait_beyond(0, std::chrono::milliseconds(200)) == 0) {
    }
    const RequestTrace t = tracker.take()[0];
    if (t.finish == FinishReason::error || t.completion_tokens != o.output_len) {
      fmt::print(stderr, "hostrun bench latency: the request ended with {} after {} tokens: {}\n",
                 finish_reason_name(t.finish), t.completion_tokens, t.error);
      return 1;
    }
    if (progress) draw_progress("runs", size_t(run), size_t(o.runs), std::chrono::duration<double>(Clock::now() - start).count());
    if (run == 0) continue;
    prompt_tokens = t.prompt_tokens;
    const double decode_s = std::accumulate(t.token_gaps_s.begin(), t.token_gaps_s.end(), 0.0);
    ttft.push_back(t.first_token_s);
    decode_rate.push_back(double(o.output_len - 1) / decode_s);
    total_s.push_back(t.first_token_s + decode_s);
  }
  if (progress) fmt::print(stderr, "\n");
  auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / double(v.size()); };
  json j;
  j["command"] = "bench latency";
  j["engine"] = engine_json(*runtime, o.common.model.engine);
  j["input_len"] = o.input_len;
  j["output_len"] = o.output_len;
  j["image"] = o.common.image;
  j["images_per_request"] = images->size();
  j["prompt_tokens"] = prompt_tokens;  // of the last run
  j["runs"] = o.runs;
  j["time_to_first_token_s"] = {{"mean", mean(ttft)}, {"min", *std::min_element(ttft.begin(), ttft.end())}, {"all", ttft}};
  j["decode_tokens_per_s"] = {{"mean", mean(decode_rate)},
                              {"max", *std::max_element(decode_rate.begin(), decode_rate.end())},
                              {"all", decode_rate}};
  j["request_latency_s"] = {{"mean", mean(total_s)}, {"all", total_s}};
  fmt::print("hostrun bench latency: {} ({}), batch 1, input {} tokens{}, output {} tokens, {} runs\n",
             runtime->model_dir(), runtime->manifest_name(), o.input_len,
             images->empty() ? "" : fmt::format(" and {} image(s) ({} prompt tokens)", images->size(), prompt_tokens),
             o.output_len, o.runs);
  fmt::print("{:<32}{:.1f} MiB\n", "weights", double(runtime->model_info().weight_bytes) / (1 << 20));
  fmt::print("{:<32}{:.4f} (min {:.4f})\n", "time to first token (s)", mean(ttft), j["time_to_first_token_s"]["min"].get<double>());
  fmt::print("{:<32}{:.1f} (max {:.1f})\n", "decode tokens/s", mean(decode_rate), j["decode_tokens_per_s"]["max"].get<double>());
  fmt::print("{:<32}{:.3f}\n", "request latency (s)", mean(total_s));
  return write_json(o.common.output, j, "latency");
}

}  // namespace

void add_bench_model_commands(CLI::App& app, GlobalOptions& options) {
  CLI::App* bench = bench_group(app);

  auto throughput = std::make_shared<ThroughputOptions>();
  auto* t = bench->add_subcommand("throughput", "Offline throughput on the local engine (the seed's profile_throughput)");
  add_common(t, throughput->common);
  t->add_option("--dataset", throughput->dataset, "CSV of input_len,output_len rows (e.g. sharegpt_like_10k.csv)");
  t->add_option("--num-prompts", throughput->num_prompts, "Requests (the first rows of the dataset)")->capture_default_str();
  t->add_option("--concurrency", throughput->concurrency, "Requests in flight at once")->capture_default_str();
  t->add_option("--input-len", throughput->input_len, "Prompt tokens when there is no --dataset")->capture_default_str();
  t->add_option("--output-len", throughput->output_len, "Reply tokens when there is no --dataset")->capture_default_str();
  t->callback([&options, throughput] { options.exit_code = run_throughput(*throughput, options); });

  auto latency = std::make_shared<LatencyOptions>();
  auto* l = bench->add_subcommand("latency", "Batch-1 time to first token and decode tokens/s on the local engine");
  add_common(l, latency->common);
  l->add_option("--input-len", latency->input_len, "Prompt tokens")->capture_default_str();
  l->add_option("--output-len", latency->output_len, "Reply tokens")->capture_default_str();
  l->add_option("--runs", latency->runs, "Timed runs after one warm-up")->capture_default_str();
  l->callback([&options, latency] { options.exit_code = run_latency(*latency, options); });
}

}  // namespace hostrun::cli
