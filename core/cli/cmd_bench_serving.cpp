// `hostrun bench serving URL`: what a client of an OpenAI-compatible server
// sees (the seed's restful-API profiling, like LMDeploy's profile_restful_api
// and vLLM's benchmark_serving): N requests with the workload's input and
// output lengths, C of them in flight at once, each streamed; reported are
// requests/s, token throughput, time to first token (TTFT), inter-token
// latency (ITL: the gaps between streamed chunks), time per output token
// (TPOT) and end-to-end latency, as percentiles.
//
// Prompts: the server tokenizes them, so this side only has to come close to
// input_len. With --tokenizer, each prompt is words encoded, cut to exactly
// input_len ids and decoded again (re-encoding may differ by a token or so);
// without it, each prompt is input_len common English words, which
// byte-level BPE vocabularies (Llama-3, GPT) hold as one token each with their
// leading space. Either way the report's token counts are the server's own
// (stream_options.include_usage); when a server sends none, they are marked as
// estimates. Every request asks max_tokens=output_len with ignore_eos.
//
// The requests go through core::RemoteEngine: one io thread, one connection
// per request (a new TCP connection is part of each TTFT, as with most
// benchmark clients).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "commands.hpp"
#include "remote_engine.hpp"
#include "tokenizer_loading.hpp"

namespace hostrun::cli {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

struct BenchServingOptions {
  std::string url;
  std::string dataset;
  int64_t num_prompts = 100;
  int64_t concurrency = 16;
  int64_t input_len = 128;
  int64_t output_len = 128;
  std::string api_key;
  std::string model;
  std::string ca_file;
  std::string endpoint = "completions";
  std::string tokenizer;
  std::string tokenizer_plugin = "hf_tokenizer";
  double temperature = 0.0;
  uint64_t seed = 0;
  std::string output;
  bool progress = true;
};

struct Workload {
  int32_t input_len = 0;
  int32_t output_len = 0;
};

struct Outcome {
  Workload asked;
  Clock::time_point sent, first, last;
  std::vector<double> gaps_ms;  // between consecutive text chunks
  int32_t chunks = 0;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  FinishReason finish = FinishReason::none;
  std::string error;
};

Result<std::vector<Workload>> read_dataset(const std::string& file) {
  std::ifstream in(file);
  if (!in) return Status(ErrorCode::not_found, fmt::format("cannot open the dataset '{}'", file));
  std::string line;
  std::vector<Workload> rows;
  int line_number = 0;
  int input_column = -1, output_column = -1;
  while (std::getline(in, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> cells;
    std::stringstream split(line);
    for (std::string cell; std::getline(split, cell, ',');) cells.push_back(cell);
    if (input_column < 0) {
      for (int i = 0; i < int(cells.size()); ++i) {
        if (cells[i] == "input_len") input_column = i;
        if (cells[i] == "output_len") output_column = i;
      }
      if (input_column < 0 || output_column < 0)
        return Status(ErrorCode::corrupt_data, fmt::format("{}:{}: expected a header with the columns input_len and "
                                                           "output_len, found '{}'", file, line_number, line));
      continue;
    }
    Workload w;
    try {
      w.input_len = std::stoi(cells.at(size_t(input_column)));
      w.output_len = std::stoi(cells.at(size_t(output_column)));
    } catch (const std::exception&) {
      return Status(ErrorCode::corrupt_data,
                    fmt::format("{}:{}: expected two integers (input_len, output_len), found '{}'", file, line_number, line));
    }
    if (w.input_len < 1 || w.output_len < 1)
      return Status(ErrorCode::corrupt_data,
                    fmt::format("{}:{}: lengths must be at least 1, found '{}'", file, line_number, line));
    rows.push_back(w);
  }
  if (rows.empty()) return Status(ErrorCode::corrupt_data, fmt::format("{}: no rows after the header", file));
  return rows;
}

// Words that byte-level BPE vocabularies keep whole, with their leading space.
constexpr const char* kWords[] = {
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his",
    "her", "they", "this", "which", "or", "be", "are", "it", "an", "had", "not", "but", "one", "have", "were",
    "all", "their", "we", "there", "been", "has", "more", "when", "who", "will", "would", "if", "out", "so",
    "time", "about", "new", "other", "some", "into", "first", "only", "after", "two", "over", "also", "can",
    "may", "year", "made", "city", "world", "people", "water", "house", "school", "music", "river", "game",
    "light", "story", "night", "paper", "money", "field", "power", "north", "south", "early", "small", "large",
    "great", "public", "family", "history", "country", "system", "company", "member", "number", "place", "state"};

std::string word_prompt(std::mt19937_64& random, int32_t words) {
  std::string text;
  text.reserve(size_t(words) * 6);
  std::uniform_int_distribution<size_t> pick(0, std::size(kWords) - 1);
  for (int32_t i = 0; i < words; ++i) {
    if (i) text += ' ';
    text += kWords[pick(random)];
  }
  return text;
}

Result<std::string> exact_prompt(const Tokenizer& tokenizer, std::mt19937_64& random, int32_t tokens) {
  std::string words = word_prompt(random, tokens + 8);
  std::vector<TokenId> ids;
  EncodeOptions no_bos;
  no_bos.add_bos = false;
  if (Status s = tokenizer.encode(words, no_bos, ids); !s) return s;
  if (int32_t(ids.size()) > tokens) ids.resize(size_t(tokens));
  std::string text;
  if (Status s = tokenizer.decode(ids, DecodeOptions{}, text); !s) return s;
  return text;
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  double rank = p / 100.0 * double(values.size() - 1);
  size_t low = size_t(rank);
  size_t high = std::min(low + 1, values.size() - 1);
  return values[low] + (values[high] - values[low]) * (rank - double(low));
}

json distribution(const std::vector<double>& values) {
  double sum = 0;
  for (double v : values) sum += v;
  return {{"mean", values.empty() ? 0.0 : sum / double(values.size())},
          {"p50", percentile(values, 50)},
          {"p75", percentile(values, 75)},
          {"p95", percentile(values, 95)},
          {"p99", percentile(values, 99)},
          {"count", values.size()}};
}

class Progress {
 public:
  Progress(size_t total, bool enabled) : total_(total), enabled_(enabled), tty_(isatty(STDERR_FILENO)) {}

  void update(size_t done, size_t failed, double seconds) {
    if (!enabled_) return;
    if (tty_) {
      constexpr int kWidth = 30;
      int filled = total_ ? int(double(done) / double(total_) * kWidth) : kWidth;
      fmt::print(stderr, "\r[{}{}] {}/{} requests, {} failed, {:.1f} s", std::string(size_t(filled), '#'),
                 std::string(size_t(kWidth - filled), '.'), done, total_, failed, seconds);
      if (done == total_) fmt::print(stderr, "\n");
      return;
    }
    // A log file gets a line per tenth, not a carriage-return animation.
    size_t tenth = total_ ? done * 10 / total_ : 10;
    if (tenth > last_tenth_ || done == total_) {
      last_tenth_ = tenth;
      fmt::print(stderr, "bench serving: {}/{} requests ({} failed), {:.1f} s\n", done, total_, failed, seconds);
    }
  }

 private:
  size_t total_;
  bool enabled_;
  bool tty_;
  size_t last_tenth_ = 0;
};

int run(const GlobalOptions& global, const BenchServingOptions& o) {
  auto fail = [](const std::string& message, int code = 1) {
    fmt::print(stderr, "hostrun bench serving: {}\n", message);
    return code;
  };
  if (o.endpoint != "completions" && o.endpoint != "chat")
    return fail(fmt::format("--endpoint is '{}'; expected completions or chat", o.endpoint), 2);

  std::vector<Workload> rows;
  if (!o.dataset.empty()) {
    auto read = read_dataset(o.dataset);
    if (!read) return fail(read.status().message(), 2);
    rows = std::move(*read);
  } else {
    rows.push_back({int32_t(o.input_len), int32_t(o.output_len)});
  }

  core::PluginRegistry registry;  // holds the tokenizer's library while it is used
  core::PluginHandle<Tokenizer> tokenizer;
  if (!o.tokenizer.empty()) {
    registry = load_plugins(global);
    namespace fs = std::filesystem;
    std::string file = fs::is_directory(o.tokenizer) ? (fs::path(o.tokenizer) / "tokenizer.json").string() : o.tokenizer;
    auto loaded = load_tokenizer(registry, o.tokenizer_plugin, file);
    if (!loaded) return fail(loaded.status().message(), 2);
    tokenizer = *loaded;
  }

  core::RemoteEngineOptions remote;
  remote.url = o.url;
  remote.api_key = o.api_key;
  remote.model = o.model;
  remote.ca_file = o.ca_file;
  auto engine = core::RemoteEngine::open(remote);
  if (!engine) return fail(engine.status().message());
  EngineInfo info = (*engine)->info();

  // The requests, prompts made up front so that making them is not timed.
  std::mt19937_64 random(o.seed);
  std::vector<Outcome> outcomes;
  std::vector<std::string> prompts;
  size_t skipped = 0;
  for (size_t i = 0; outcomes.size() < size_t(o.num_prompts) && i < size_t(o.num_prompts) * 4 + rows.size(); ++i) {
    Workload w = rows[i % rows.size()];
    if (info.session_len > 0 && w.input_len + w.output_len > info.session_len) {
      ++skipped;  // the server would refuse it; LMDeploy's benchmark drops these too
      continue;
    }
    std::string prompt;
    if (tokenizer) {
      auto made = exact_prompt(*tokenizer, random, w.input_len);
      if (!made) return fail(made.status().message());
      prompt = std::move(*made);
    } else {
      prompt = word_prompt(random, w.input_len);
    }
    prompts.push_back(std::move(prompt));
    Outcome outcome;
    outcome.asked = w;
    outcomes.push_back(std::move(outcome));
  }
  if (outcomes.empty())
    return fail(fmt::format("no request fits the server's session length ({} tokens)", info.session_len), 2);
  if (skipped)
    fmt::print(stderr, "hostrun bench serving: skipped {} workload rows longer than the session length ({})\n", skipped,
               info.session_len);

  std::mutex mutex;
  std::condition_variable changed;
  size_t next = 0, finished = 0, failed = 0, in_flight = 0;
  const size_t total = outcomes.size();
  const size_t concurrency = size_t(std::max<int64_t>(1, o.concurrency));
  Progress progress(total, o.progress);
  const auto started = Clock::now();
  std::string first_error;

  // Keeps `concurrency` requests in flight; called with `mutex` held.
  std::function<void()> fill;
  auto submit_one = [&] {
    size_t index = next++;
    Outcome& out = outcomes[index];
    GenerationRequest request;
    if (o.endpoint == "chat")
      request.input = std::vector<ChatMessage>{{"user", std::move(prompts[index]), {}}};
    else
      request.input = std::move(prompts[index]);
    request.sampling.temperature = float(o.temperature);
    request.sampling.top_p = 1.0f;
    request.sampling.max_tokens = out.asked.output_len;
    request.sampling.ignore_eos = true;
    request.user = "bench";
    out.sent = Clock::now();
    ++in_flight;
    auto id = (*engine)->submit(std::move(request), [&, index](const StreamEvent& e) {
      auto now = Clock::now();
      std::lock_guard lock(mutex);
      Outcome& r = outcomes[index];
      if (!e.text.empty()) {
        if (r.chunks == 0)
          r.first = now;
        else
          r.gaps_ms.push_back(std::chrono::duration<double, std::milli>(now - r.last).count());
        r.last = now;
        r.chunks++;
      }
      if (e.finish == FinishReason::none) return;
      r.finish = e.finish;
      r.error = e.error;
      r.prompt_tokens = e.prompt_tokens;
      r.completion_tokens = e.completion_tokens;
      if (r.chunks == 0) r.first = r.last = now;
      r.last = now;
      ++finished;
      --in_flight;
      if (e.finish == FinishReason::error) {
        ++failed;
        if (first_error.empty()) first_error = e.error;
      }
      progress.update(finished, failed, std::chrono::duration<double>(now - started).count());
      fill();
      changed.notify_all();
    });
    if (!id) {
      out.finish = FinishReason::error;
      out.error = id.status().message();
      if (first_error.empty()) first_error = out.error;
      ++finished;
      ++failed;
      --in_flight;
    }
  };
  fill = [&] {
    while (next < total && in_flight < concurrency) submit_one();
  };
  {
    std::unique_lock lock(mutex);
    fill();
    changed.wait(lock, [&] { return finished == total; });
  }
  const double duration = std::chrono::duration<double>(Clock::now() - started).count();

  // The numbers.
  std::vector<double> ttft, itl, tpot, latency;
  uint64_t prompt_tokens = 0, completion_tokens = 0;
  size_t completed = 0, short_replies = 0;
  bool usage_reported = true;
  json per_request = json::array();
  for (const auto& r : outcomes) {
    json row = {{"input_len", r.asked.input_len}, {"output_len", r.asked.output_len},
                {"finish", finish_reason_name(r.finish)}};
    if (r.finish == FinishReason::error) {
      row["error"] = r.error;
      per_request.push_back(row);
      continue;
    }
    ++completed;
    bool has_usage = r.completion_tokens > 0 || r.prompt_tokens > 0;
    usage_reported = usage_reported && has_usage;
    int32_t completion = has_usage ? r.completion_tokens : r.chunks;
    int32_t prompt = has_usage ? r.prompt_tokens : r.asked.input_len;
    prompt_tokens += uint64_t(prompt);
    completion_tokens += uint64_t(completion);
    if (completion < r.asked.output_len) ++short_replies;
    double first_ms = std::chrono::duration<double, std::milli>(r.first - r.sent).count();
    double total_ms = std::chrono::duration<double, std::milli>(r.last - r.sent).count();
    ttft.push_back(first_ms);
    latency.push_back(total_ms);
    itl.insert(itl.end(), r.gaps_ms.begin(), r.gaps_ms.end());
    if (completion > 1) tpot.push_back((total_ms - first_ms) / double(completion - 1));
    row.update({{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"chunks", r.chunks},
                {"ttft_ms", first_ms}, {"latency_ms", total_ms}});
    per_request.push_back(row);
  }

  json report = {
      {"backend", "openai-compatible"},
      {"url", (*engine)->url().text()},
      {"model", info.model_name},
      {"endpoint", o.endpoint == "chat" ? "/v1/chat/completions" : "/v1/completions"},
      {"dataset", o.dataset.empty() ? json(fmt::format("fixed {}x{}", o.input_len, o.output_len)) : json(o.dataset)},
      {"prompts_from", tokenizer ? "tokenizer (exact input_len ids, decoded)" : "common words (~1 token each)"},
      {"num_prompts", total},
      {"concurrency", concurrency},
      {"completed", completed},
      {"failed", failed},
      {"skipped_over_session_len", skipped},
      {"short_replies", short_replies},
      {"token_counts", usage_reported ? "server usage" : "estimated (the server sent no usage)"},
      {"duration_s", duration},
      {"request_throughput", double(completed) / duration},
      {"prompt_tokens", prompt_tokens},
      {"completion_tokens", completion_tokens},
      {"output_token_throughput", double(completion_tokens) / duration},
      {"total_token_throughput", double(prompt_tokens + completion_tokens) / duration},
      {"ttft_ms", distribution(ttft)},
      {"itl_ms", distribution(itl)},
      {"tpot_ms", distribution(tpot)},
      {"latency_ms", distribution(latency)},
      {"requests", per_request},
  };

  auto line = [](const char* label, const std::string& value) { fmt::print("{:<34}{}\n", label, value); };
  fmt::print("\n{:=^60}\n", " hostrun bench serving ");
  line("Server:", fmt::format("{} ({})", (*engine)->url().text(), info.model_name));
  line("Endpoint:", report["endpoint"].get<std::string>());
  line("Requests (ok / failed):", fmt::format("{} / {}", completed, failed));
  line("Concurrency:", std::to_string(concurrency));
  line("Duration (s):", fmt::format("{:.2f}", duration));
  line("Request throughput (req/s):", fmt::format("{:.3f}", double(completed) / duration));
  line("Prompt tokens:", fmt::format("{}{}", prompt_tokens, usage_reported ? "" : " (estimated)"));
  line("Completion tokens:", fmt::format("{}{}", completion_tokens, usage_reported ? "" : " (estimated)"));
  line("Output token throughput (tok/s):", fmt::format("{:.1f}", double(completion_tokens) / duration));
  line("Total token throughput (tok/s):", fmt::format("{:.1f}", double(prompt_tokens + completion_tokens) / duration));
  fmt::print("{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}\n", "(ms)", "mean", "p50", "p75", "p95", "p99");
  for (auto [label, key] : {std::pair{"Time to first token", "ttft_ms"}, std::pair{"Inter-token latency", "itl_ms"},
                            std::pair{"Time per output token", "tpot_ms"}, std::pair{"End-to-end latency", "latency_ms"}}) {
    const json& d = report[key];
    fmt::print("{:<34}{:>10.2f}{:>10.2f}{:>10.2f}{:>10.2f}{:>10.2f}\n", label, d["mean"].get<double>(),
               d["p50"].get<double>(), d["p75"].get<double>(), d["p95"].get<double>(), d["p99"].get<double>());
  }
  if (short_replies)
    fmt::print("{} replies were shorter than their output_len (does the server honour ignore_eos?)\n", short_replies);
  if (!first_error.empty()) fmt::print("First error: {}\n", first_error);
  fmt::print("{:=^60}\n", "");

  if (!o.output.empty()) {
    std::ofstream out(o.output);
    out << report.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    if (!out) return fail(fmt::format("cannot write the report to '{}'", o.output));
  }
  return failed == total ? 1 : 0;
}

}  // namespace

void add_bench_serving_command(CLI::App& app, GlobalOptions& options) {
  CLI::App* bench = bench_group(app);
  auto* cmd = bench->add_subcommand(
      "serving", "Streamed requests against an OpenAI-compatible server: requests/s, token throughput, TTFT, "
                 "inter-token latency and TPOT percentiles");
  auto o = std::make_shared<BenchServingOptions>();
  cmd->add_option("URL", o->url, "The server, e.g. http://localhost:23333")->required();
  cmd->add_option("--dataset", o->dataset, "CSV with the columns input_len,output_len (one request per row, in "
                                           "order, repeated when --num-prompts is larger)");
  cmd->add_option("--num-prompts", o->num_prompts, "Requests to send")->capture_default_str()->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--concurrency", o->concurrency, "Requests in flight at once")->capture_default_str()->check(CLI::Range(1, 100'000));
  cmd->add_option("--input-len", o->input_len, "Prompt tokens of every request when there is no --dataset")
      ->capture_default_str()->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--output-len", o->output_len, "Completion tokens of every request when there is no --dataset")
      ->capture_default_str()->check(CLI::Range(1, 10'000'000));
  cmd->add_option("--api-key", o->api_key, "Bearer key the server expects");
  cmd->add_option("--model", o->model, "Which of the server's models (default: the first /v1/models lists)");
  cmd->add_option("--ssl-ca-file", o->ca_file,
                  "https:// only: PEM certificate(s) of a CA to trust besides the system's (a private CA)")
      ->type_name("FILE");
  cmd->add_option("--endpoint", o->endpoint, "completions (/v1/completions) or chat (/v1/chat/completions)")->capture_default_str();
  cmd->add_option("--tokenizer", o->tokenizer, "Model folder or tokenizer.json: make prompts of exactly input_len tokens");
  cmd->add_option("--tokenizer-plugin", o->tokenizer_plugin, "The tokenizer plugin for --tokenizer")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "Sampling temperature of every request")->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed for the prompts' words")->capture_default_str();
  cmd->add_option("--output", o->output, "Write the report (summary and every request) as JSON to this file");
  cmd->add_flag("--progress,!--no-progress", o->progress, "Progress on stderr")->capture_default_str();
  cmd->callback([&options, o] { options.exit_code = run(options, *o); });
}

}  // namespace hostrun::cli
