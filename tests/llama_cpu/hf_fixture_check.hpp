// The HF-fixture check shared by llama_cpu's suite (test_hf_fixtures.cpp)
// and llama_cuda's (tests/llama_cuda): scripts/make_fixtures.py ran on the GPU
// machine: it wrote random checkpoints with `hostrun checkpoint random` (now `hostrun-llama-checkpoint random`), ran
// them in transformers (float32, eager attention) and recorded, per prompt,
// HF's logits and greedy tokens in tests/fixtures/hf/<fixture>/. The
// checkpoints are not committed: the writer is deterministic, so the check
// writes them again from the recorded config and options (and compares
// per-tensor sums with the ones HF loaded), then runs the model and checks:
//   - full-vocabulary logits of each prompt's last position (one prefill),
//   - logits of every position for a fixed subset of ids (teacher-forced,
//     one token a step, so prefill and decode paths are both covered),
//   within `tolerance` relative (max |ours - hf| / max |hf| per row);
//   - greedy generation equal to HF's for all recorded tokens, or, where the
//     backend computes in bf16, up to a token where HF's own top-2 margin is
//     within what that rounding can flip.
#pragma once

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <fstream>

#include "llama_test_util.hpp"

namespace llama_test {

struct FixtureTolerance {
  double logits = 1e-4;           // relative, per row
  // A greedy difference is allowed where HF's top-2 margin / max |logit| is
  // below this, or below the run's own last-position error.
  double greedy_tie_margin = 0;
  // > 0: where the fixture records HF's own bf16-vs-f32 error for a prompt
  // (large fixtures), the logits may differ by up to this many times that
  // error when it exceeds `logits`.
  double hf_bf16_factor = 0;
};

inline fs::path fixture_root() {
  // Overridable so a fixture set made elsewhere (or a local fake) can be tried
  // without touching tests/fixtures/.
  if (const char* dir = std::getenv("HOSTRUN_HF_FIXTURE_DIR"); dir && *dir) return dir;
  return HOSTRUN_HF_FIXTURE_DIR;
}

inline std::vector<float> read_f32(const fs::path& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path.string());
  std::vector<float> values(count);
  // The files are little-endian float32, as is every machine this runs on.
  in.read(reinterpret_cast<char*>(values.data()), std::streamsize(count * sizeof(float)));
  REQUIRE_MESSAGE(in.gcount() == std::streamsize(count * sizeof(float)),
                  path.string() << ": expected " << count << " float32 values");
  return values;
}

inline DType dtype_named(const std::string& name) {
  if (name == "bf16") return DType::bf16;
  if (name == "f16") return DType::f16;
  REQUIRE_MESSAGE(name == "f32", "unknown dtype " << name);
  return DType::f32;
}

inline void check_fixture(const fs::path& folder, const Backend& backend = {}, const FixtureTolerance& tolerance = {}) {
  nlohmann::json manifest;
  {
    std::ifstream in(folder / "manifest.json");
    REQUIRE_MESSAGE(in.good(), "cannot open " << (folder / "manifest.json").string());
    manifest = nlohmann::json::parse(in);
  }
  REQUIRE(manifest.at("format").get<int>() == 1);
  const std::string name = manifest.at("fixture");
  CAPTURE(name);

  // The checkpoint HF saw, written again.
  auto parsed = llama::parse_llama_config(manifest.at("config").dump(), name + " manifest config");
  REQUIRE_MESSAGE(parsed.has_value(), parsed.status().message());
  const llama::LlamaConfig config = parsed.value();
  llama::RandomLlamaOptions options;
  options.seed = manifest.at("seed").get<uint64_t>();
  options.dtype = dtype_named(manifest.at("dtype"));
  options.init_std = manifest.at("init_std").get<double>();
  TempDir dir("hf_" + name);
  Status written = llama::write_random_llama_checkpoint(dir.path(), config, options);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  auto loaded = load(dir.path(), 2, backend.cuda ? "bf16" : "f32", 64, 16, backend);
  // The same weights as HF loaded, or nothing below means anything.
  std::vector<std::string> differing;
  for (const auto& [tensor, sums] : manifest.at("tensor_sums").items()) {
    const std::vector<double> values = tensor_values(*loaded->weights, tensor);
    double sum = 0, squares = 0;
    for (double v : values) {
      sum += v;
      squares += v * v;
    }
    // Summation order differs from torch's; a different tensor differs by far more.
    if (std::abs(sum - sums.at("sum").get<double>()) > 1e-9 * std::max(1.0, squares) ||
        std::abs(squares - sums.at("sum_squares").get<double>()) > 1e-9 * squares)
      differing.push_back(tensor);
  }
  if (!differing.empty()) {
    FAIL_CHECK("the regenerated checkpoint differs from the one HF loaded in "
               << differing.size() << " tensors, e.g. " << differing.front()
               << " (did the random checkpoint writer change? then rerun scripts/make_fixtures.py)");
    return;
  }

  const auto subset = manifest.at("logit_subset_ids").get<std::vector<TokenId>>();
  const size_t vocab = size_t(config.vocab_size);
  for (const auto& prompt : manifest.at("prompts")) {
    const std::string prompt_name = prompt.at("name");
    CAPTURE(prompt_name);
    const auto ids = prompt.at("ids").get<std::vector<TokenId>>();
    const auto hf_greedy = prompt.at("greedy_ids").get<std::vector<TokenId>>();
    double last_bound = tolerance.logits, per_position_bound = tolerance.logits;
    if (tolerance.hf_bf16_factor > 0 && prompt.contains("hf_bf16_relative_error")) {
      const auto& hf_bf16 = prompt.at("hf_bf16_relative_error");
      last_bound = std::max(last_bound, tolerance.hf_bf16_factor * hf_bf16.at("last").get<double>());
      per_position_bound =
          std::max(per_position_bound, tolerance.hf_bf16_factor * hf_bf16.at("per_position_subset").get<double>());
      MESSAGE(name << "/" << prompt_name << ": bounds " << last_bound << " (last) and " << per_position_bound
                   << " (per position), from HF's own bf16 error");
    }

    // Last position, full vocabulary, from one prefill; then greedy decoding.
    Request request(ids);
    StepDriver driver(*loaded->model, 64, 16);
    auto first = driver.run({{&request, int32_t(ids.size())}});
    REQUIRE_MESSAGE(first.status.is_ok(), first.status.message());
    const auto hf_last = read_f32(folder / prompt.at("last_logits_file").get<std::string>(), vocab);
    const double last_error = relative_error(first.output.logits.at(0), hf_last);
    CHECK_MESSAGE(last_error < last_bound, "last-position logits differ from HF by " << last_error << " (relative)");
    if (last_bound != tolerance.logits) MESSAGE(name << "/" << prompt_name << ": last-position error " << last_error);
    request.return_logits = false;
    while (request.generated().size() < hf_greedy.size()) {
      auto next = driver.run({{&request, 1}});
      REQUIRE_MESSAGE(next.status.is_ok(), next.status.message());
    }
    const std::vector<TokenId> ours(request.generated().begin(), request.generated().end());
    size_t agree = 0;
    while (agree < ours.size() && ours[agree] == hf_greedy[agree]) ++agree;
    // HF's margin between its top two logits at the first disagreement says
    // whether it was a near-tie (rounding) or a real bug: a tie where it is
    // under greedy_tie_margin of the largest logit, or under the largest
    // last-position error measured above (logits that far off, which the
    // bound accepts, can swap two that close).
    double margin = -1;
    if (agree < hf_greedy.size() && prompt.contains("greedy_top2_margins"))
      margin = prompt.at("greedy_top2_margins").at(agree).get<double>();
    const double hf_scale = *std::max_element(hf_last.begin(), hf_last.end(), [](float a, float b) {
      return std::abs(a) < std::abs(b);
    });
    const bool near_tie =
        margin >= 0 && margin < std::max(tolerance.greedy_tie_margin, last_error) * std::abs(hf_scale);
    if (agree < hf_greedy.size() && near_tie)
      MESSAGE(name << "/" << prompt_name << ": greedy tokens agree with HF for " << agree << " of " << hf_greedy.size()
                   << ", then a near-tie (HF margin " << margin << ")");
    CHECK_MESSAGE((agree == hf_greedy.size() || near_tie), "greedy tokens agree with HF for " << agree << " of " << hf_greedy.size()
                                                 << " (HF's top-2 logit margin at the first difference: " << margin
                                                 << ")");

    // Every position, subset of ids, one token a step with the prompt forced.
    const auto hf_subset = read_f32(folder / prompt.at("subset_logits_file").get<std::string>(), ids.size() * subset.size());
    Request forced(std::vector<TokenId>{ids[0]});
    StepDriver forced_driver(*loaded->model, 64, 16, 5);
    double worst = 0;
    for (size_t position = 0; position < ids.size(); ++position) {
      auto step = forced_driver.run({{&forced, 1}});
      REQUIRE_MESSAGE(step.status.is_ok(), step.status.message());
      const auto& logits = step.output.logits.at(0);
      std::vector<float> ours_subset, hf_row(hf_subset.begin() + std::ptrdiff_t(position * subset.size()),
                                             hf_subset.begin() + std::ptrdiff_t((position + 1) * subset.size()));
      for (TokenId id : subset) ours_subset.push_back(logits.at(size_t(id)));
      worst = std::max(worst, relative_error(ours_subset, hf_row));
      // The next prompt token replaces the sampled one (its K/V is computed next step).
      if (position + 1 < ids.size()) forced.tokens.back() = ids[position + 1];
    }
    CHECK_MESSAGE(worst < per_position_bound, "per-position logits differ from HF by up to " << worst << " (relative)");
    if (per_position_bound != tolerance.logits) MESSAGE(name << "/" << prompt_name << ": per-position error " << worst);
  }
}


// The recorded fixture folders (fails, saying what to run, when there are none).
inline std::vector<fs::path> fixture_folders() {
  const fs::path root = fixture_root();
  std::vector<fs::path> fixtures;
  std::error_code ec;
  if (fs::is_directory(root, ec))
    for (const auto& entry : fs::directory_iterator(root))
      if (fs::exists(entry.path() / "manifest.json")) fixtures.push_back(entry.path());
  std::sort(fixtures.begin(), fixtures.end());
  if (fixtures.empty())
    FAIL("no HF fixtures in " << root.string()
                              << ": run scripts/make_fixtures.py on the GPU machine (see the usage at its top) "
                                 "and commit tests/fixtures/hf/");
  return fixtures;
}

}  // namespace llama_test
