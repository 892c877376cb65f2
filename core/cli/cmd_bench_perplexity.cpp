// `hostrun bench perplexity MODEL_DIR --text FILE`: the model's perplexity on
// a text, every token scored with the model's own logits through the engine
// (core/perplexity.hpp says how the windows are laid out), like llama.cpp's
// perplexity tool and LMDeploy's evaluation. Any model folder, manifest,
// device and KV format the build runs; the figure and its standard error
// printed and, with --output, written as JSON.
#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "bench_runtime.hpp"
#include "perplexity.hpp"

namespace hostrun::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Texts larger than this are refused before reading (they would not finish anyway).
constexpr uintmax_t kMaxTextBytes = uintmax_t(256) << 20;

struct PerplexityFlags {
  BenchModelFlags model;
  std::string text;
  int64_t context = 512;
  int64_t stride = 0;
  int64_t max_in_flight = 64;
  std::string output;
  bool no_progress = false;
};

Result<std::string> read_text(const std::string& path) {
  std::error_code error;
  if (!fs::is_regular_file(path, error))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--text {}: {}", path, fs::exists(path, error) ? "not a regular file" : "no such file"));
  if (fs::file_size(path, error) > kMaxTextBytes)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("--text {}: larger than {} MiB", path, kMaxTextBytes >> 20));
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) return Status(ErrorCode::io_error, fmt::format("--text {}: cannot read", path));
  if (text.str().empty()) return Status(ErrorCode::invalid_argument, fmt::format("--text {}: empty", path));
  return text.str();
}

// The BOS each window starts with: the model's (config.json), else the tokenizer's.
std::optional<TokenId> window_bos(const core::Runtime& runtime, const Tokenizer& tokenizer) {
  if (runtime.model_info().bos_id) return runtime.model_info().bos_id;
  return tokenizer.special_tokens().bos;
}

int run_perplexity(const PerplexityFlags& o, const GlobalOptions& global) {
  const char* command = "perplexity";
  if (o.context < 1 || o.context > INT32_MAX || o.stride < 0 || o.stride > INT32_MAX || o.max_in_flight < 1) {
    fmt::print(stderr, "hostrun bench perplexity: expected --context >= 1, --stride >= 0 and --max-in-flight >= 1\n");
    return 2;
  }
  auto text = read_text(o.text);
  if (!text) {
    fmt::print(stderr, "hostrun bench perplexity: {}\n", text.status().message());
    return 2;
  }
  int exit_code = 0;
  auto runtime = open_bench_runtime(o.model, global, command, exit_code);
  if (!runtime) return exit_code;
  core::Engine& engine = runtime->engine();
  const Tokenizer& tokenizer = *engine.tokenizer();
  // The text is text: special-token spellings in it are not special.
  std::vector<TokenId> tokens;
  if (Status s = tokenizer.encode(*text, {.add_bos = false, .parse_special = false}, tokens); !s) {
    fmt::print(stderr, "hostrun bench perplexity: --text {}: {}\n", o.text, s.message());
    return 1;
  }
  core::PerplexityOptions options;
  options.context = int32_t(o.context);
  options.stride = int32_t(o.stride);
  options.bos = window_bos(*runtime, tokenizer);
  options.max_in_flight = int32_t(std::min<int64_t>(o.max_in_flight, INT32_MAX));

  const auto start = Clock::now();
  auto last_draw = start - std::chrono::seconds(1);
  int64_t drawn = -1;
  auto progress = [&](int64_t scored, int64_t total) {
    const auto now = Clock::now();
    if (o.no_progress || scored == drawn || (now - last_draw < std::chrono::milliseconds(200) && scored < total)) return;
    last_draw = now;
    drawn = scored;
    fmt::print(stderr, "\rtokens scored {}/{} {:.1f} s", scored, total, std::chrono::duration<double>(now - start).count());
  };
  auto measured = core::measure_perplexity(engine, tokens, options, progress);
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (!o.no_progress) fmt::print(stderr, "\n");
  if (!measured) {
    fmt::print(stderr, "hostrun bench perplexity: {}\n", measured.status().message());
    return measured.status().code() == ErrorCode::invalid_argument ? 2 : 1;
  }
  const core::PerplexityResult& r = *measured;
  nlohmann::json j;
  j["command"] = "bench perplexity";
  j["engine"] = engine_json(*runtime, o.model.engine);
  j["text"] = o.text;
  j["context"] = o.context;
  j["stride"] = r.stride;
  j["bos"] = options.bos ? nlohmann::json(*options.bos) : nlohmann::json(nullptr);
  j["text_tokens"] = r.text_tokens;
  j["scored_tokens"] = r.scored_tokens;
  j["windows"] = r.windows;
  j["perplexity"] = r.perplexity;
  j["perplexity_stderr"] = r.perplexity_stderr;
  j["mean_nll"] = r.mean_nll;
  j["mean_nll_stderr"] = r.mean_nll_stderr;
  j["elapsed_s"] = elapsed;
  j["tokens_per_s"] = double(r.scored_tokens) / elapsed;
  const core::EngineStats stats = engine.stats();
  j["engine_stats"] = engine_stats_json(stats);

  fmt::print("hostrun bench perplexity: {} ({}), {}\n", runtime->model_dir(), runtime->manifest_name(), o.text);
  fmt::print("{:<28}{} tokens, {} scored in {} windows (context {}, stride {}{})\n", "text", r.text_tokens,
             r.scored_tokens, r.windows, o.context, r.stride, options.bos ? ", BOS first" : ", no BOS");
  fmt::print("{:<28}{:.4f} +/- {:.4f}\n", "perplexity", r.perplexity, r.perplexity_stderr);
  fmt::print("{:<28}{:.5f} +/- {:.5f}\n", "mean NLL (nats/token)", r.mean_nll, r.mean_nll_stderr);
  fmt::print("{:<28}{:.2f} s, {:.1f} tokens/s\n", "time", elapsed, double(r.scored_tokens) / elapsed);
  return write_json(o.output, j, command);
}

}  // namespace

void add_bench_perplexity_command(CLI::App& app, GlobalOptions& options) {
  auto flags = std::make_shared<PerplexityFlags>();
  auto* p = bench_group(app)->add_subcommand(
      "perplexity", "Perplexity of the model on a text, each token scored with the model's own logits");
  flags->model.add_to(p);
  p->add_option("--text", flags->text, "The text to score (UTF-8; special-token spellings in it are plain text)")
      ->required();
  p->add_option("--context", flags->context, "Tokens per window, BOS included")->capture_default_str();
  p->add_option("--stride", flags->stride, "Tokens between window starts (0: half the context)")->capture_default_str();
  p->add_option("--max-in-flight", flags->max_in_flight, "Windows the engine scores at once")->capture_default_str();
  p->add_option("--output", flags->output, "Write the results as JSON to this file");
  p->add_flag("--no-progress", flags->no_progress, "No progress line on stderr");
  p->callback([&options, flags] { options.exit_code = run_perplexity(*flags, options); });
}

}  // namespace hostrun::cli
