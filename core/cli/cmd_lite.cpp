// `hostrun lite auto_awq MODEL_DIR --work-dir OUT` (LMDeploy's `lite
// auto_awq`) and `hostrun lite fp8 MODEL_DIR --work-dir OUT`. The host's
// part: the model loaded through its own plugins (no engine), for auto_awq
// the calibration text tokenized into --calib-samples blocks of
// --calib-seqlen tokens, the quantizer that reads folders of that format and
// this architecture (the manifest table says which), a new folder written
// into a staging folder beside OUT (the quantizer's weights and config.json,
// the source's other files copied) and renamed into place only when
// complete. What each format does is its quantizer's (plugins/awq/auto_awq.hpp,
// plugins/fp8/lite_fp8.hpp).
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "checkpoint/folder_writer.hpp"
#include "checkpoint/model_directory.hpp"
#include "commands.hpp"
#include "log.hpp"
#include "runtime.hpp"

namespace hostrun::cli {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr uintmax_t kMaxCalibrationBytes = uintmax_t(1) << 30;

// The flags every lite command takes.
struct FolderFlags {
  std::string model_dir;
  std::string work_dir;
  std::string device = "cpu";
  bool force = false;
  bool no_progress = false;
};

struct AutoAwqFlags : FolderFlags {
  std::string calib_dataset = "gutenberg";
  int64_t calib_samples = 128;
  int64_t calib_seqlen = 2048;
  int64_t w_bits = 4;
  int64_t w_group_size = 128;
};

// Why the command stops, and its exit status (2: the flags, 1: the work).
struct Refusal {
  int exit_code = 1;
  std::string message;
};

[[noreturn]] void refuse(int exit_code, const std::string& message) { throw Refusal{exit_code, message}; }

// The calibration text: a named corpus hostrun installs, a .jsonl file (the
// "text" of each line's object, one document a line) or any other file as
// plain text. Documents are joined with a blank line.
std::string read_calibration_text(const std::string& dataset) {
  fs::path path = dataset;
  if (dataset == "gutenberg") {
    path = core::shipped_calibration_text();
    if (!fs::is_regular_file(path))
      refuse(2, fmt::format("--calib-dataset gutenberg: {} is missing (scripts/run.sh puts it there: "
                            "scripts/make-calib-corpus.sh DIR); or give a text or JSONL file",
                            path.string()));
  }
  std::error_code error;
  if (!fs::is_regular_file(path, error))
    refuse(2, fmt::format("--calib-dataset {}: {} (expected gutenberg, a text file or a JSONL file)", dataset,
                          fs::exists(path, error) ? "not a regular file" : "no such file"));
  if (fs::file_size(path, error) > kMaxCalibrationBytes)
    refuse(2, fmt::format("--calib-dataset {}: larger than {} MiB", dataset, kMaxCalibrationBytes >> 20));
  std::ifstream in(path, std::ios::binary);
  std::ostringstream all;
  all << in.rdbuf();
  if (!in) refuse(1, fmt::format("--calib-dataset {}: cannot read", dataset));
  if (path.extension() != ".jsonl") return all.str();
  std::string text;
  std::istringstream lines(all.str());
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto doc = nlohmann::json::parse(line, nullptr, false);
    if (!doc.is_object() || !doc.contains("text") || !doc["text"].is_string())
      refuse(2, fmt::format("--calib-dataset {}: line {} is not a JSON object with a \"text\" string", dataset,
                            number));
    if (!text.empty()) text += "\n\n";
    text += doc["text"].get<std::string>();
  }
  return text;
}

// --calib-samples blocks of --calib-seqlen tokens, each BOS and then a run of
// the text's tokens; the blocks are spread evenly over the whole text (not
// its first pages only), as AutoAWQ samples documents across its dataset.
std::vector<std::vector<TokenId>> calibration_blocks(const std::string& text, const Tokenizer& tokenizer,
                                                     std::optional<TokenId> bos, const AutoAwqFlags& o) {
  std::vector<TokenId> tokens;
  if (Status s = tokenizer.encode(text, {.add_bos = false, .parse_special = false}, tokens); !s)
    refuse(1, fmt::format("--calib-dataset {}: {}", o.calib_dataset, s.message()));
  const size_t run = size_t(o.calib_seqlen) - (bos ? 1 : 0);
  const size_t available = run == 0 ? 0 : tokens.size() / run;
  if (available == 0)
    refuse(2, fmt::format("--calib-dataset {}: {} tokens, fewer than one block of --calib-seqlen {}", o.calib_dataset,
                          tokens.size(), o.calib_seqlen));
  const size_t count = std::min(size_t(o.calib_samples), available);
  if (count < size_t(o.calib_samples))
    fmt::print(stderr, "hostrun lite auto_awq: --calib-dataset {} holds {} tokens: {} blocks of {}, not {}\n",
               o.calib_dataset, tokens.size(), count, o.calib_seqlen, o.calib_samples);
  std::vector<std::vector<TokenId>> blocks;
  for (size_t b = 0; b < count; ++b) {
    const size_t start = (b * available / count) * run;
    std::vector<TokenId> block;
    if (bos) block.push_back(*bos);
    block.insert(block.end(), tokens.begin() + std::ptrdiff_t(start), tokens.begin() + std::ptrdiff_t(start + run));
    blocks.push_back(std::move(block));
  }
  return blocks;
}

// The source's files other than its weights and config.json (tokenizer,
// generation config, chat template, README), copied as they are.
void copy_side_files(const fs::path& from, const fs::path& to) {
  for (const auto& entry : fs::directory_iterator(from)) {
    const std::string name = entry.path().filename().string();
    const bool weights = name == checkpoint::kConfigFileName || name == checkpoint::kIndexFileName ||
                         entry.path().extension() == ".safetensors" || entry.path().extension() == ".bin" ||
                         entry.path().extension() == ".pt" || entry.path().extension() == ".pth";
    if (weights || !entry.is_regular_file() || name.front() == '.') continue;
    fs::copy_file(entry.path(), to / name);
  }
}

// "\rcalibrating 12/128" on stderr, at most five times a second.
class ProgressBar final : public QuantizeProgress {
 public:
  explicit ProgressBar(bool quiet) : quiet_(quiet) {}
  void on_progress(std::string_view stage, int64_t done, int64_t total) noexcept override {
    if (quiet_) return;
    const auto now = Clock::now();
    const bool last = done == total;
    if (!last && stage == stage_ && now - drawn_ < std::chrono::milliseconds(200)) return;
    stage_ = std::string(stage);
    drawn_ = now;
    fmt::print(stderr, "\r{} {}/{} {:.1f} s{}", stage, done, total,
               std::chrono::duration<double>(now - start_).count(), last ? "\n" : "   ");
  }

 private:
  bool quiet_;
  std::string stage_;
  Clock::time_point start_ = Clock::now(), drawn_{};
};

void check_folders(const FolderFlags& o) {
  std::error_code error;
  const fs::path out = fs::weakly_canonical(o.work_dir, error);
  const fs::path source = fs::weakly_canonical(o.model_dir, error);
  const auto inside = [](const fs::path& a, const fs::path& b) {  // a == b or a inside b
    auto [end_b, end_a] = std::mismatch(b.begin(), b.end(), a.begin(), a.end());
    return end_b == b.end();
  };
  if (inside(source, out) || inside(out, source))
    refuse(2, fmt::format("--work-dir {} and MODEL_DIR {} overlap; write the quantized folder somewhere else",
                          o.work_dir, o.model_dir));
  if (fs::exists(out, error) && !(fs::is_directory(out, error) && fs::is_empty(out, error)) && !o.force)
    refuse(2, fmt::format("--work-dir {} exists and is not empty; --force replaces it", o.work_dir));
}

void check_flags(const AutoAwqFlags& o) {
  if (o.calib_samples < 1 || o.calib_seqlen < 2 || o.calib_seqlen > INT32_MAX)
    refuse(2, "expected --calib-samples >= 1 and --calib-seqlen >= 2");
  if (o.w_bits != 4) refuse(2, fmt::format("--w-bits {}: AWQ here writes 4-bit weights (--w-bits 4)", o.w_bits));
  if (o.w_group_size != 32 && o.w_group_size != 64 && o.w_group_size != 128)
    refuse(2, fmt::format("--w-group-size {}: expected 32, 64 or 128", o.w_group_size));
  check_folders(o);
}

// The source folder loaded as an unquantized model (no engine).
std::unique_ptr<core::Runtime> open_source(const FolderFlags& o, const GlobalOptions& global) {
  core::RuntimeOptions options;
  options.model_dir = o.model_dir;
  options.device = o.device;
  options.model_format = "hf";
  options.start_engine = false;
  for (const auto& dir : global.plugin_dirs) options.plugin_dirs.emplace_back(dir);
  auto runtime = core::Runtime::open(options, &core::process_log_sink());
  if (!runtime) refuse(1, runtime.status().message());
  return std::move(runtime).value();
}

struct Written {
  fs::path folder;
  double tensor_mib = 0.0, source_mib = 0.0, seconds = 0.0;
};

// Runs the quantizer's job into a staging folder beside --work-dir (with the
// source's side files) and renames it into place once complete.
Written write_quantized_folder(const FolderFlags& o, core::Runtime& r, Quantizer& quantizer, QuantizeJob job) {
  // "OUT/" names OUT: the staging folder goes beside it, never inside.
  fs::path out = fs::absolute(o.work_dir).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();
  fs::create_directories(out.parent_path());
  std::string pattern = (out.parent_path() / ("." + out.filename().string() + ".partial-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) refuse(1, fmt::format("cannot make a folder beside {}", out.string()));
  const fs::path staging = pattern;
  struct RemoveUnlessKept {
    fs::path path;
    bool keep = false;
    ~RemoveUnlessKept() {
      std::error_code ignored;
      if (!keep) fs::remove_all(path, ignored);
    }
  } cleanup{staging};

  auto writer = checkpoint::FolderWriter::create(staging);
  if (!writer) refuse(1, writer.status().message());
  copy_side_files(o.model_dir, staging);
  ProgressBar progress(o.no_progress);
  job.source = &r.weights();
  job.model = &r.model();
  job.output = writer->get();
  job.progress = &progress;
  const auto start = Clock::now();
  if (Status s = quantizer.quantize(job); !s) refuse(1, s.message());
  if (Status s = (*writer)->finish(); !s) refuse(1, s.message());
  if (fs::exists(out)) fs::remove_all(out);
  fs::rename(staging, out);
  cleanup.keep = true;
  return {out, double((*writer)->tensor_bytes()) / (1 << 20), double(r.weights().total_tensor_bytes()) / (1 << 20),
          std::chrono::duration<double>(Clock::now() - start).count()};
}

void run_auto_awq(const AutoAwqFlags& o, const GlobalOptions& global) {
  check_flags(o);
  const std::string text = read_calibration_text(o.calib_dataset);
  const auto runtime = open_source(o, global);
  core::Runtime& r = *runtime;
  const ModelInfo info = r.model_info();
  if (info.max_positions > 0 && o.calib_seqlen > info.max_positions)
    refuse(2, fmt::format("--calib-seqlen {}: {} holds at most {} positions", o.calib_seqlen, o.model_dir,
                          info.max_positions));
  auto quantizer = r.make_quantizer_for("awq");
  if (!quantizer) refuse(1, quantizer.status().message());
  const std::optional<TokenId> bos = info.bos_id ? info.bos_id : r.tokenizer().special_tokens().bos;
  const auto blocks = calibration_blocks(text, r.tokenizer(), bos, o);
  QuantizeJob job;
  job.calibration = blocks;
  job.bits = int32_t(o.w_bits);
  job.group_size = int32_t(o.w_group_size);
  const Written w = write_quantized_folder(o, r, **quantizer, job);
  fmt::print("wrote {}: AWQ {}-bit, group {}, {} calibration blocks of {} tokens; {:.1f} MiB of weights (from {:.1f}); "
             "{:.1f} s\n",
             w.folder.string(), o.w_bits, o.w_group_size, blocks.size(), o.calib_seqlen, w.tensor_mib, w.source_mib,
             w.seconds);
}

void run_fp8(const FolderFlags& o, const GlobalOptions& global) {
  check_folders(o);
  const auto runtime = open_source(o, global);
  auto quantizer = runtime->make_quantizer_for("fp8");
  if (!quantizer) refuse(1, quantizer.status().message());
  QuantizeJob job;
  job.bits = 8;
  job.group_size = 0;  // one scale per output channel
  const Written w = write_quantized_folder(o, *runtime, **quantizer, job);
  fmt::print("wrote {}: FP8 e4m3 weights with a scale per output channel, dynamic activation scales; {:.1f} MiB of "
             "weights (from {:.1f}); {:.1f} s\n",
             w.folder.string(), w.tensor_mib, w.source_mib, w.seconds);
}

// Runs a lite command's body, turning refusals into messages and exit codes.
template <typename Body>
void run_reporting(const char* name, GlobalOptions& global, Body body) {
  try {
    body();
  } catch (const Refusal& refused) {
    fmt::print(stderr, "hostrun lite {}: {}\n", name, refused.message);
    global.exit_code = refused.exit_code;
  } catch (const std::exception& e) {
    fmt::print(stderr, "hostrun lite {}: {}\n", name, e.what());
    global.exit_code = 1;
  }
}

void add_folder_flags(CLI::App* cmd, FolderFlags& flags, const char* device_help) {
  cmd->add_option("MODEL_DIR", flags.model_dir, "Unquantized HF model folder")->required();
  cmd->add_option("--work-dir", flags.work_dir, "Folder to write (made; replaced only with --force)")->required();
  cmd->add_option("--device", flags.device, device_help)->capture_default_str();
  cmd->add_flag("--force", flags.force, "Replace --work-dir if it exists");
  cmd->add_flag("--no-progress", flags.no_progress, "No progress on stderr");
}

}  // namespace

void add_lite_command(CLI::App& app, GlobalOptions& global) {
  CLI::App* lite = app.add_subcommand("lite", "Quantize a model folder offline (LMDeploy's lite)");
  lite->require_subcommand(1);

  auto awq = std::make_shared<AutoAwqFlags>();
  CLI::App* cmd = lite->add_subcommand(
      "auto_awq", "AWQ 4-bit weights: calibrate, search scales and clipping, write an AutoAWQ folder");
  add_folder_flags(cmd, *awq, "Where calibration runs: cpu, or cuda where the model plugin calibrates there");
  cmd->add_option("--calib-dataset", awq->calib_dataset,
                  "gutenberg (public-domain books hostrun installs), or a text or JSONL (\"text\" per line) file")
      ->capture_default_str();
  cmd->add_option("--calib-samples", awq->calib_samples, "Calibration blocks")->capture_default_str();
  cmd->add_option("--calib-seqlen", awq->calib_seqlen, "Tokens per calibration block")->capture_default_str();
  cmd->add_option("--w-bits", awq->w_bits, "Weight bits (4)")->capture_default_str();
  cmd->add_option("--w-group-size", awq->w_group_size, "Input channels per scale: 32, 64 or 128")
      ->capture_default_str();
  cmd->callback([awq, &global] { run_reporting("auto_awq", global, [&] { run_auto_awq(*awq, global); }); });

  auto fp8 = std::make_shared<FolderFlags>();
  CLI::App* fp8_cmd = lite->add_subcommand(
      "fp8", "FP8 (e4m3) weights with a scale per output channel, dynamic activation scales: no calibration");
  add_folder_flags(fp8_cmd, *fp8,
                   "Where the source model loads: cpu, or a device whose model plugin lists its linear layers");
  fp8_cmd->callback([fp8, &global] { run_reporting("fp8", global, [&] { run_fp8(*fp8, global); }); });
}

}  // namespace hostrun::cli
