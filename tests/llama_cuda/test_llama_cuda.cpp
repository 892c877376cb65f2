// llama_cuda + kv_cuda against llama_cpu + kv_cpu, through the real plugins
// (loaded from the build's plugin folder) and the real engine, on random
// checkpoints of several Llama shapes. Exits 2 saying "no CUDA device" where
// there is no GPU (ctest label gpu; CI runs -LE gpu).
//
// Checks:
//  - logits of a prefill + decode steps: ||cuda - cpu|| / ||cpu|| < 2e-2 per
//    step (bf16 weights and activations, f32 accumulation, vs f32 on the CPU;
//    one shape also with f16 activations and K/V);
//  - greedy tokens of both equal for the first steps, unless the CPU's margin
//    between its top two logits is under 2e-2 of the logits' scale at that
//    step (then bf16 rounding may legitimately flip the choice);
//  - the engine on CUDA: 48 concurrent greedy requests equal each run alone,
//    and again with a KV budget so tight the engine must preempt;
//  - llama_cuda given a quantizer (dense_test_quantizer.hpp: the test's own
//    cuBLAS layers, fusing no epilogue) gives the dense model's logits;
//  - an AWQ folder through the awq quantizer's W4A16 layers gives its
//    dequantized twin's logits and tokens;
//  - an FP8 folder through the fp8 quantizer's FP8 tensor-core layers stays
//    within cosine 0.995 of its bf16 source and near the CPU's FP8 layers
//    (as near as two roundings of activations to e4m3 allow).
#include <cuda_runtime_api.h>
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <future>
#include <random>

#include "llama_common/llama_config.hpp"
#include "llama_common/llama_weights.hpp"
#include "checkpoint/model_directory.hpp"
#include "checkpoint/safetensors.hpp"
#include "dense_test_quantizer.hpp"
#include "engine/engine.hpp"
#include "llama_test_util.hpp"
#include "plugin_loader.hpp"
#include "ref/dtype.hpp"
#include "ref/fp8_linear.hpp"
#include "rtn_awq.hpp"
#include "../support/letter_tokenizer.hpp"
#include "../support/temp_dir.hpp"

using namespace hostrun;
namespace fs = std::filesystem;

namespace {

using hostrun::test::TempDir;

struct Loaded {
  std::unique_ptr<core::PluginRegistry> registry;
  std::unique_ptr<checkpoint::ModelDirectory> weights;
  core::PluginHandle<KvCachePolicy> policy;
  core::PluginHandle<Model> model;
};

// How the CUDA model is made; the CPU runs f32 with its defaults.
struct CudaOptions {
  DType half = DType::bf16;       // activations and K/V pages: bf16 or f16
  Quantizer* quantizer = nullptr;  // given to load(): the linear layers come from it
  int64_t small_gemm_max_rows = -1;  // >= 0: the setting; else the plugin's default
  int64_t quant_policy = 0;          // kv_cuda's pages: 0 (the activation dtype), 8 or 4
};

std::unique_ptr<Loaded> load(const fs::path& dir, bool cuda, int32_t num_blocks, const CudaOptions& options = {}) {
  auto loaded = std::make_unique<Loaded>();
  loaded->registry = std::make_unique<core::PluginRegistry>();
  const std::array<const char*, 2> plugins = cuda ? std::array<const char*, 2>{"hostrun_llama_cuda.so", "hostrun_kv_cuda.so"}
                                                 : std::array<const char*, 2>{"hostrun_llama_cpu.so", "hostrun_kv_cpu.so"};
  for (const char* name : plugins) loaded->registry->load_file(llama_test::test_plugin_dir() / name);
  for (const auto& refused : loaded->registry->refused()) FAIL(refused.file.string() << ": " << refused.reason);
  loaded->weights = std::move(checkpoint::ModelDirectory::open(dir).value());
  const Device device = cuda ? Device{DeviceKind::cuda, 0} : Device{DeviceKind::cpu, 0};
  Settings kv;  // the policies' defaults: kv_cuda's pages take the model's activation dtype
  if (cuda && options.quant_policy != 0) kv.set("quant_policy", options.quant_policy);
  auto policy = loaded->registry->create<KvCachePolicy>(cuda ? "kv_cuda" : "kv_cpu", kv, nullptr, "", device);
  REQUIRE_MESSAGE(policy.has_value(), policy.status().message());
  loaded->policy = *policy;
  Settings ms;
  if (cuda) {
    ms.set("max_tokens_per_step", int64_t(64));  // small, so long prefills take several passes
    ms.set("max_batch", int64_t(16));            // and many sampled rows several LM-head chunks
    if (options.small_gemm_max_rows >= 0) ms.set("small_gemm_max_rows", options.small_gemm_max_rows);
  } else {
    ms.set("threads", int64_t(4));
  }
  auto model = loaded->registry->create<Model>(cuda ? "llama_cuda" : "llama_cpu", ms, nullptr, "", device);
  REQUIRE_MESSAGE(model.has_value(), model.status().message());
  loaded->model = *model;
  LoadContext context;
  context.weights = loaded->weights.get();
  context.device = device;
  context.activation_dtype = cuda ? options.half : DType::f32;
  context.kv_policy = loaded->policy.get();
  context.quantizer = options.quantizer;
  Status s = loaded->model->load(context);
  REQUIRE_MESSAGE(s.is_ok(), s.message());
  if (num_blocks > 0) {
    Status a = loaded->model->allocate_kv_cache(num_blocks, 16);
    REQUIRE_MESSAGE(a.is_ok(), a.message());
  }
  return loaded;
}

llama::LlamaConfig shape(int hidden, int heads, int kv_heads, int head_dim, int layers, int vocab, bool tied) {
  llama::LlamaConfig c = llama::tiny_llama_config();
  c.hidden_size = hidden;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim;
  c.num_hidden_layers = layers;
  c.intermediate_size = hidden * 2 + 64;
  c.vocab_size = vocab;
  c.max_position_embeddings = 2048;
  c.tie_word_embeddings = tied;
  return c;
}

void write_checkpoint(const fs::path& dir, const llama::LlamaConfig& config, uint64_t seed) {
  llama::RandomLlamaOptions options;
  options.seed = seed;
  options.dtype = DType::bf16;
  Status written = llama::write_random_llama_checkpoint(dir, config, options);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
}

// Runs prompt then `steps` greedy decode steps on one sequence, returning
// each step's logits (none without `with_logits`: then decode steps of one
// sequence run as CUDA graphs).
std::vector<std::vector<float>> run_sequence(Model& model, const std::vector<TokenId>& prompt, int steps,
                                             std::vector<TokenId>& generated, const std::string& label,
                                             bool with_logits = true) {
  SamplingParams sp;
  sp.temperature = 0;
  std::vector<int32_t> table(128);
  for (int i = 0; i < 128; ++i) table[size_t(i)] = 127 - i;  // scattered, reversed blocks
  std::vector<TokenId> history = prompt;
  std::vector<std::vector<float>> logits;
  int32_t cached = 0;
  std::vector<TokenId> ids = prompt;
  for (int s = 0; s <= steps; ++s) {
    std::vector<int32_t> positions(ids.size());
    for (size_t j = 0; j < ids.size(); ++j) positions[j] = cached + int32_t(j);
    StepSequence seq;
    seq.query_len = int32_t(ids.size());
    seq.cached_len = cached;
    seq.block_table = table;
    seq.sample = true;
    seq.sampling = &sp;
    seq.history = history;
    seq.generated = std::span<const TokenId>(history).subspan(prompt.size());
    seq.return_logits = with_logits;
    StepInput input{ids, positions, std::span<const StepSequence>(&seq, 1)};
    StepOutput out;
    Status st = model.step(input, out);
    // Progress on stderr, so a run that stops answering shows where.
    fmt::print(stderr, "{} step {}: {}\n", label, s, st.is_ok() ? "ok" : st.message());
    std::fflush(stderr);
    REQUIRE_MESSAGE(st.is_ok(), st.message());
    REQUIRE(out.sampled.size() == 1);
    if (with_logits) logits.push_back(out.logits.at(0));
    cached += int32_t(ids.size());
    ids = {out.sampled[0]};
    history.push_back(out.sampled[0]);
    generated.push_back(out.sampled[0]);
  }
  return logits;
}

}  // namespace

TEST_CASE("llama_cuda logits and greedy tokens follow llama_cpu on several shapes") {
  struct Case {
    const char* name;
    llama::LlamaConfig config;
    DType half = DType::bf16;  // activations and K/V on the GPU
  };
  const Case cases[] = {
      {"hd128_gqa4_untied", shape(512, 8, 2, 128, 3, 1000, false)},
      {"hd64_mha_tied", shape(256, 4, 4, 64, 2, 500, true)},
      {"hd128_gqa8_untied", shape(1024, 8, 1, 128, 2, 700, false)},
      {"hd64_gqa2_tied", shape(384, 6, 3, 64, 2, 300, true)},
      {"hd128_gqa4_untied_f16", shape(512, 8, 2, 128, 3, 1000, false), DType::f16},
  };
  std::mt19937 rng(7);
  // HOSTRUN_TEST_SHAPE=name runs one shape alone.
  const char* only = std::getenv("HOSTRUN_TEST_SHAPE");
  for (const Case& c : cases) {
    if (only && *only && std::string(only) != c.name) continue;
    CAPTURE(c.name);
    TempDir dir(c.name);
    write_checkpoint(dir.path(), c.config, 11);
    std::vector<TokenId> prompt(100);  // > max_tokens_per_step: the prefill takes two passes
    for (auto& id : prompt) id = TokenId(rng() % uint32_t(c.config.vocab_size));
    const int steps = 12;
    std::vector<TokenId> cpu_tokens, gpu_tokens;
    std::vector<std::vector<float>> cpu, gpu;
    {
      auto m = load(dir.path(), false, 128);
      cpu = run_sequence(*m->model, prompt, steps, cpu_tokens, std::string(c.name) + " cpu");
    }
    {
      auto m = load(dir.path(), true, 128, CudaOptions{c.half});
      gpu = run_sequence(*m->model, prompt, steps, gpu_tokens, std::string(c.name) + " cuda");
    }
    double worst = 0;
    for (int s = 0; s <= steps; ++s) {
      // After the first token that differs (allowed only on a near-tie) the two run different contexts.
      double num = 0, den = 0;
      for (size_t i = 0; i < cpu[size_t(s)].size(); ++i) {
        const double d = double(gpu[size_t(s)][i]) - cpu[size_t(s)][i];
        num += d * d;
        den += double(cpu[size_t(s)][i]) * cpu[size_t(s)][i];
      }
      const double rel = std::sqrt(num / den);
      worst = std::max(worst, rel);
      CHECK_MESSAGE(rel < 2e-2, fmt::format("{} step {}: relative error {:.3e}", c.name, s, rel));
      if (cpu_tokens[size_t(s)] != gpu_tokens[size_t(s)]) {
        std::vector<float> sorted = cpu[size_t(s)];
        std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
        const double scale = std::sqrt(den / double(sorted.size()));
        CHECK_MESSAGE(sorted[0] - sorted[1] < 2e-2 * scale,
                      fmt::format("{} step {}: tokens {} (cpu) vs {} (cuda) with a CPU margin of {:.3e}", c.name, s,
                                  cpu_tokens[size_t(s)], gpu_tokens[size_t(s)], sorted[0] - sorted[1]));
        break;
      }
    }
    MESSAGE(fmt::format("{}: worst logits relative error {:.3e}, {} of {} greedy tokens equal", c.name, worst,
                        std::mismatch(cpu_tokens.begin(), cpu_tokens.end(), gpu_tokens.begin()).first - cpu_tokens.begin(),
                        cpu_tokens.size()));
  }
}

namespace {

// 100 random ids: more than load()'s max_tokens_per_step, so the prefill takes two passes.
std::vector<TokenId> two_pass_prompt(uint32_t seed, int64_t vocab) {
  std::mt19937 rng(seed);
  std::vector<TokenId> prompt(100);
  for (auto& id : prompt) id = TokenId(rng() % uint32_t(vocab));
  return prompt;
}

double relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = double(got[i]) - want[i];
    num += d * d;
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

}  // namespace

// The quantizer path: every linear layer from LoadContext::quantizer, the
// epilogues it does not fuse (all of them) run by the model. Against the
// dense model with small_gemm off both run the same cuBLAS products and the
// same RoPE/KV/SiLU kernels, so the logits agree to the bit (1e-6 allows a
// -0 / +0); against the dense model's fused small_gemm epilogues (the
// default), to bf16 rounding. Greedy tokens without logits read-back also
// run the quantizer's layers inside CUDA graphs.
namespace {

// Every report kept; checked after the call (nothing may throw through the model's noexcept boundary).
class RecordingObserver final : public CalibrationObserver {
 public:
  std::vector<std::string> order;
  std::map<std::string, std::vector<float>> inputs;  // [tokens, in] as reported (appended per pass)
  std::map<std::string, int64_t> in_features;
  bool host_f32 = true;
  void on_linear_input(std::string_view linear, const TensorView& x) noexcept override {
    host_f32 &= x.rank == 2 && x.dtype == DType::f32 && x.device.kind == DeviceKind::cpu && x.is_contiguous();
    if (!host_f32) return;
    const std::string name(linear);
    if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
    in_features[name] = x.shape[1];
    std::vector<float>& rows = inputs[name];
    rows.insert(rows.end(), x.as<const float>(), x.as<const float>() + x.numel());
  }
};

}  // namespace

// The CUDA model's calibration hook against llama_cpu's (f32): every linear
// input of a prompt longer than one pass (max_tokens_per_step 64), in the
// same order and within bf16 rounding; the model's own KV cache untouched
// (the greedy run after it equals one without it).
TEST_CASE("llama_cuda observe_linear_inputs reports llama_cpu's linear inputs within bf16 rounding") {
  TempDir dir("observe");
  const llama::LlamaConfig config = shape(512, 8, 2, 128, 2, 1000, false);
  write_checkpoint(dir.path(), config, 5);
  std::mt19937 rng(3);
  std::vector<TokenId> prompt(150);
  for (auto& id : prompt) id = TokenId(rng() % uint32_t(config.vocab_size));
  RecordingObserver cpu, gpu;
  {
    auto m = load(dir.path(), false, 0);
    Status s = m->model->observe_linear_inputs(prompt, cpu);
    REQUIRE_MESSAGE(s.is_ok(), s.message());
  }
  auto m = load(dir.path(), true, 128);
  std::vector<TokenId> before_tokens, after_tokens;
  const std::vector<TokenId> short_prompt(prompt.begin(), prompt.begin() + 20);
  run_sequence(*m->model, short_prompt, 4, before_tokens, "before calibration");
  Status s = m->model->observe_linear_inputs(prompt, gpu);
  REQUIRE_MESSAGE(s.is_ok(), s.message());
  run_sequence(*m->model, short_prompt, 4, after_tokens, "after calibration");
  CHECK(before_tokens == after_tokens);
  REQUIRE(gpu.host_f32);
  CHECK(gpu.order == cpu.order);
  REQUIRE(gpu.order.size() == size_t(7 * config.num_hidden_layers));
  double worst = 0.0;
  for (const std::string& name : cpu.order) {
    const std::vector<float>& want = cpu.inputs[name];
    const std::vector<float>& got = gpu.inputs[name];
    REQUIRE_MESSAGE(got.size() == want.size(), name);
    CHECK(gpu.in_features[name] == cpu.in_features[name]);
    CHECK(got.size() == prompt.size() * size_t(cpu.in_features[name]));
    const double rel = relative_error(got, want);
    worst = std::max(worst, rel);
    CHECK_MESSAGE(rel < 2e-2, fmt::format("{}: relative error {:.3e}", name, rel));
  }
  MESSAGE(fmt::format("observe_linear_inputs: worst relative error against llama_cpu {:.3e}", worst));
  {
    RecordingObserver unused;
    CHECK(m->model->observe_linear_inputs({}, unused).code() == ErrorCode::invalid_argument);
    const std::vector<TokenId> outside{TokenId(config.vocab_size)};
    CHECK(m->model->observe_linear_inputs(outside, unused).code() == ErrorCode::invalid_argument);
  }
}

TEST_CASE("llama_cuda with a quantizer's linear layers gives the dense model's logits") {
  TempDir dir("quantizer");
  const llama::LlamaConfig config = shape(512, 8, 2, 128, 3, 1000, false);
  write_checkpoint(dir.path(), config, 13);
  const std::vector<TokenId> prompt = two_pass_prompt(5, config.vocab_size);
  const int steps = 12;
  auto run = [&](Quantizer* quantizer, int64_t small_gemm_max_rows, bool with_logits, std::vector<TokenId>& tokens) {
    auto m = load(dir.path(), true, 128, CudaOptions{DType::bf16, quantizer, small_gemm_max_rows});
    const std::string label = fmt::format("{} small_gemm_max_rows={}", quantizer ? "quantizer" : "dense",
                                          small_gemm_max_rows);
    return run_sequence(*m->model, prompt, steps, tokens, label, with_logits);
  };
  llama_cuda_test::DenseTestQuantizer quantizer;
  std::vector<TokenId> dense_tokens, quantized_tokens, fused_tokens, graphed_tokens, dense_graphed_tokens;
  const auto dense = run(nullptr, 0, true, dense_tokens);
  const auto quantized = run(&quantizer, 0, true, quantized_tokens);
  CHECK(quantizer.layers_loaded == 4 * int(config.num_hidden_layers));
  const auto fused = run(nullptr, -1, true, fused_tokens);
  double worst_equal = 0, worst_fused = 0;
  for (int s = 0; s <= steps; ++s) {
    worst_equal = std::max(worst_equal, relative_error(quantized[size_t(s)], dense[size_t(s)]));
    worst_fused = std::max(worst_fused, relative_error(quantized[size_t(s)], fused[size_t(s)]));
  }
  MESSAGE(fmt::format("quantizer path vs dense: worst relative error {:.3e} (small_gemm off), {:.3e} (dense with "
                      "small_gemm's fused epilogues)",
                      worst_equal, worst_fused));
  CHECK(worst_equal < 1e-6);
  CHECK(quantized_tokens == dense_tokens);
  CHECK(worst_fused < 2e-2);
  run(&quantizer, 0, false, graphed_tokens);
  run(nullptr, 0, false, dense_graphed_tokens);
  CHECK(graphed_tokens == dense_graphed_tokens);
  CHECK(graphed_tokens == quantized_tokens);
}

// AWQ weights on the GPU: an AutoAWQ folder (round-to-nearest 4-bit of a
// random checkpoint, group 64 so the MLP's 1,088 input channels pad to the
// kernel's 128-deep blocks) through the awq quantizer's W4A16 layers, against
// its dequantized twin (W = (q - z) s as dense weights, run in bf16 by
// llama_cuda's own layers). The twin's weights are rounded to bf16 at load,
// the AWQ layers use (q - z) s exactly, so the logits agree to bf16
// rounding; greedy tokens equal; the AWQ decode steps also run inside CUDA
// graphs with the same tokens.
TEST_CASE("llama_cuda with awq's W4A16 layers gives its dequantized twin's logits and tokens") {
  TempDir dir("awq");
  const llama::LlamaConfig config = shape(512, 8, 2, 128, 3, 1000, false);
  write_checkpoint(dir.path() / "bf16", config, 19);
  llama::RtnAwqOptions rtn;
  rtn.group_size = 64;
  rtn.dequantized_twin = dir.path() / "twin";
  Status written = llama::write_rtn_awq_checkpoint(dir.path() / "bf16", dir.path() / "awq", rtn);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  core::PluginRegistry quantizers;
  quantizers.load_file(llama_test::test_plugin_dir() / "hostrun_awq.so");
  for (const auto& refused : quantizers.refused()) FAIL(refused.file.string() << ": " << refused.reason);
  auto made = quantizers.create<Quantizer>("awq", Settings{}, nullptr, "quantizer", Device{DeviceKind::cuda, 0});
  REQUIRE_MESSAGE(made.has_value(), made.status().message());
  Quantizer* awq = made.value().get();

  const std::vector<TokenId> prompt = two_pass_prompt(7, config.vocab_size);
  const int steps = 12;
  std::vector<TokenId> twin_tokens, awq_tokens, graphed_tokens;
  std::vector<std::vector<float>> twin, quantized;
  {
    auto m = load(dir.path() / "twin", true, 128);
    twin = run_sequence(*m->model, prompt, steps, twin_tokens, "dequantized twin");
  }
  {
    auto m = load(dir.path() / "awq", true, 128, CudaOptions{DType::bf16, awq, -1});
    quantized = run_sequence(*m->model, prompt, steps, awq_tokens, "awq");
  }
  double worst = 0;
  for (int s = 0; s <= steps; ++s) worst = std::max(worst, relative_error(quantized[size_t(s)], twin[size_t(s)]));
  MESSAGE(fmt::format("awq W4A16 vs dequantized twin: worst logits relative error {:.3e}, {} of {} greedy tokens equal",
                      worst, std::mismatch(awq_tokens.begin(), awq_tokens.end(), twin_tokens.begin()).first -
                                 awq_tokens.begin(),
                      awq_tokens.size()));
  CHECK(worst < 2e-2);
  CHECK(awq_tokens == twin_tokens);
  auto graphed = load(dir.path() / "awq", true, 128, CudaOptions{DType::bf16, awq, -1});
  run_sequence(*graphed->model, prompt, steps, graphed_tokens, "awq, graphs", false);
  CHECK(graphed_tokens == awq_tokens);
}

// The bf16 folder `source` as an FP8 folder in `destination`, as `hostrun lite
// fp8` writes one: each layer's seven linear weights as e4m3 codes with
// max/448 scales per output channel (ref::quantize_weight_e4m3), the rest as
// it is, quantization_config added.
void write_fp8_folder(const fs::path& source, const fs::path& destination) {
  auto opened = checkpoint::ModelDirectory::open(source);
  REQUIRE_MESSAGE(opened.has_value(), opened.status().message());
  const checkpoint::ModelDirectory& weights = *opened.value();
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  const auto add = [&](std::string name, DType dtype, std::vector<int64_t> shape, const void* data, size_t bytes) {
    storage.emplace_back(bytes);
    std::memcpy(storage.back().data(), data, bytes);
    tensors.push_back({std::move(name), dtype, std::move(shape), std::span<const std::byte>(storage.back())});
  };
  storage.reserve(weights.tensor_names().size() * 2);
  for (const std::string& name : weights.tensor_names()) {
    const TensorView view = weights.tensor(name).value();
    std::vector<int64_t> shape(view.shape.begin(), view.shape.begin() + view.rank);
    const bool linear = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
    if (!linear) {
      add(name, view.dtype, shape, view.data, view.nbytes());
      continue;
    }
    REQUIRE(view.dtype == DType::bf16);
    const size_t out = size_t(shape[0]), in = size_t(shape[1]);
    std::vector<float> w(out * in);
    ref::convert_to_f32(view.data, ref::DType::bf16, w.size(), w.data());
    std::vector<uint8_t> codes(w.size());
    std::vector<float> scales(out);
    ref::quantize_weight_e4m3(w.data(), out, in, codes.data(), scales.data());
    add(name, DType::f8_e4m3, shape, codes.data(), codes.size());
    add(name.substr(0, name.size() - std::string("weight").size()) + "weight_scale", DType::f32, {int64_t(out), 1},
        scales.data(), scales.size() * sizeof(float));
  }
  fs::create_directories(destination);
  const Status written = checkpoint::write_safetensors(destination / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  nlohmann::json config = nlohmann::json::parse(weights.config_json());
  config["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}};
  std::ofstream(destination / "config.json") << config.dump(2) << "\n";
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double dot = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return dot / std::sqrt(aa * bb);
}

// FP8 weights and activations on the GPU (issue 17): an FP8 folder made from
// a bf16 checkpoint, run through the fp8 quantizer's layers (x rounded to e4m3
// per row by kernels/cuda, fp8_small_gemm or cuBLASLt's FP8 GEMM). Against
// the bf16 source on the GPU every step's logits stay within cosine
// `min_cosine` (the 0.995) until the greedy texts part; the decode
// steps in CUDA graphs give the eager steps' tokens. Against the same folder
// on the CPU (fp8's ref layers) only within 0.985: the CPU rounds f32
// activations to e4m3 and the GPU bf16 ones, e4m3's steps are 1/8 of a power
// of two, so with activations ~1% apart several percent of the codes land a
// step apart and the two FP8 results differ by about as much as each does
// from its source (H200: 0.9920 between them, 0.9954 from the bf16 source).
// The kernels themselves are checked on the same bytes in test_kernels_cuda.
void compare_fp8_with_source(const fs::path& bf16_dir, const fs::path& fp8_dir, int64_t vocab, bool with_cpu,
                             double min_cosine) {
  core::PluginRegistry quantizers;
  quantizers.load_file(llama_test::test_plugin_dir() / "hostrun_fp8.so");
  for (const auto& refused : quantizers.refused()) FAIL(refused.file.string() << ": " << refused.reason);
  auto on_gpu = quantizers.create<Quantizer>("fp8", Settings{}, nullptr, "quantizer", Device{DeviceKind::cuda, 0});
  REQUIRE_MESSAGE(on_gpu.has_value(), on_gpu.status().message());
  auto on_cpu = quantizers.create<Quantizer>("fp8", Settings{}, nullptr, "quantizer", Device{DeviceKind::cpu, 0});
  REQUIRE_MESSAGE(on_cpu.has_value(), on_cpu.status().message());

  const std::vector<TokenId> prompt = two_pass_prompt(5, vocab);
  const int steps = 12;
  std::vector<TokenId> bf16_tokens, fp8_tokens, cpu_tokens, graphed_tokens;
  std::vector<std::vector<float>> bf16, fp8, cpu;
  {
    auto m = load(bf16_dir, true, 128);
    bf16 = run_sequence(*m->model, prompt, steps, bf16_tokens, "bf16 source");
  }
  {
    auto m = load(fp8_dir, true, 128, CudaOptions{DType::bf16, on_gpu.value().get(), -1});
    fp8 = run_sequence(*m->model, prompt, steps, fp8_tokens, "fp8 on cuda");
  }
  if (with_cpu) {
    auto m = load(fp8_dir, false, 128, CudaOptions{DType::bf16, on_cpu.value().get(), -1});
    cpu = run_sequence(*m->model, prompt, steps, cpu_tokens, "fp8 on the cpu");
  }
  double worst_source = 1.0, worst_cpu = 1.0;
  for (int s = 0; s <= steps; ++s) {
    if (s == 0 || fp8_tokens[size_t(s - 1)] == bf16_tokens[size_t(s - 1)])
      worst_source = std::min(worst_source, cosine(fp8[size_t(s)], bf16[size_t(s)]));
    if (with_cpu && (s == 0 || fp8_tokens[size_t(s - 1)] == cpu_tokens[size_t(s - 1)]))
      worst_cpu = std::min(worst_cpu, cosine(fp8[size_t(s)], cpu[size_t(s)]));
  }
  const auto equal_prefix = [&](const std::vector<TokenId>& other) {
    return other.empty() ? 0 : std::mismatch(fp8_tokens.begin(), fp8_tokens.end(), other.begin()).first - fp8_tokens.begin();
  };
  MESSAGE(fmt::format("fp8 on cuda ({}): worst logits cosine {:.6f} against the bf16 source, {} against fp8 on the "
                      "cpu; {} and {} of {} greedy tokens equal",
                      fp8_dir.string(), worst_source, with_cpu ? fmt::format("{:.6f}", worst_cpu) : "not run",
                      equal_prefix(bf16_tokens), equal_prefix(cpu_tokens), fp8_tokens.size()));
  CHECK(worst_source >= min_cosine);
  CHECK(worst_source < 1.0);  // the layers really are FP8
  if (with_cpu) CHECK(worst_cpu >= 0.985);
  auto graphed = load(fp8_dir, true, 128, CudaOptions{DType::bf16, on_gpu.value().get(), -1});
  run_sequence(*graphed->model, prompt, steps, graphed_tokens, "fp8 on cuda, graphs", false);
  CHECK(graphed_tokens == fp8_tokens);
}

TEST_CASE("llama_cuda with fp8's FP8 layers stays within cosine 0.995 of its bf16 source") {
  TempDir dir("fp8");
  const llama::LlamaConfig config = shape(512, 8, 2, 128, 3, 1000, false);
  write_checkpoint(dir.path() / "bf16", config, 23);
  write_fp8_folder(dir.path() / "bf16", dir.path() / "fp8");
  compare_fp8_with_source(dir.path() / "bf16", dir.path() / "fp8", config.vocab_size, true, 0.995);
}

// The same comparison on a folder pair made outside the test (hostrun lite
// fp8 of a model): HOSTRUN_TEST_FP8_FOLDERS=BF16_DIR:FP8_DIR, the bound
// HOSTRUN_TEST_FP8_MIN_COSINE (default 0.995). The CPU run is left out there
// (an 8B forward pass on kernels/ref would take hours). Random weights are
// no test of the bound at depth: a random Llama-3-8B's logits move 7.5%
// under bf16 rounding alone (the HF fixture rows of docs/benchmarks.md) and
// 0.80 in cosine under FP8's 16x coarser rounding; the bound is for trained
// folders.
TEST_CASE("llama_cuda with fp8's FP8 layers on the folders HOSTRUN_TEST_FP8_FOLDERS names" *
          doctest::skip(std::getenv("HOSTRUN_TEST_FP8_FOLDERS") == nullptr)) {
  const std::string folders = std::getenv("HOSTRUN_TEST_FP8_FOLDERS");
  const size_t colon = folders.find(':');
  REQUIRE_MESSAGE(colon != std::string::npos, "HOSTRUN_TEST_FP8_FOLDERS is BF16_DIR:FP8_DIR");
  const fs::path bf16_dir = folders.substr(0, colon), fp8_dir = folders.substr(colon + 1);
  std::ifstream config_file(bf16_dir / "config.json");
  const std::string config_text((std::istreambuf_iterator<char>(config_file)), std::istreambuf_iterator<char>());
  auto config = llama::parse_llama_config(config_text, (bf16_dir / "config.json").string());
  REQUIRE_MESSAGE(config.has_value(), config.status().message());
  const char* min_cosine = std::getenv("HOSTRUN_TEST_FP8_MIN_COSINE");
  compare_fp8_with_source(bf16_dir, fp8_dir, config.value().vocab_size, false,
                          min_cosine != nullptr ? std::strtod(min_cosine, nullptr) : 0.995);
}

// int8 / int4 pages (kv_cuda quant_policy 8 / 4) against bf16 pages on the
// same model: every step's logits within cosine 0.999 (int8) / 0.99 (int4),
// through a two-pass prefill that reads its own quantized prefix and the
// decode steps; and the decode steps also run as CUDA graphs, giving the
// same greedy tokens as the eager steps that returned logits.
TEST_CASE("kv_cuda int8 and int4 pages keep llama_cuda's logits within cosine 0.999 / 0.99 of bf16 pages") {
  TempDir dir("kv_quant");
  const llama::LlamaConfig config = shape(512, 8, 2, 128, 3, 1000, false);
  write_checkpoint(dir.path(), config, 17);
  const std::vector<TokenId> prompt = two_pass_prompt(9, config.vocab_size);
  const int steps = 12;
  std::vector<TokenId> bf16_tokens;
  std::vector<std::vector<float>> bf16;
  {
    auto m = load(dir.path(), true, 128);
    bf16 = run_sequence(*m->model, prompt, steps, bf16_tokens, "bf16 pages");
  }
  for (auto [policy, bar] : {std::pair{int64_t(8), 0.999}, {int64_t(4), 0.99}}) {
    CAPTURE(policy);
    CudaOptions options;
    options.quant_policy = policy;
    auto m = load(dir.path(), true, 128, options);
    CHECK(m->policy->format().quant_policy == policy);
    std::vector<TokenId> tokens, graphed_tokens;
    const auto got = run_sequence(*m->model, prompt, steps, tokens, fmt::format("int{} pages", policy));
    double worst = 1.0;
    for (int s = 0; s <= steps; ++s) {
      double dot = 0, a = 0, b = 0;
      for (size_t i = 0; i < got[size_t(s)].size(); ++i) {
        dot += double(got[size_t(s)][i]) * bf16[size_t(s)][i];
        a += double(got[size_t(s)][i]) * got[size_t(s)][i];
        b += double(bf16[size_t(s)][i]) * bf16[size_t(s)][i];
      }
      worst = std::min(worst, dot / std::sqrt(a * b));
      // After the first token that differs the two continue different texts.
      if (tokens[size_t(s)] != bf16_tokens[size_t(s)]) break;
    }
    MESSAGE(fmt::format("int{} pages: worst logits cosine {:.6f} against bf16 pages, {} of {} greedy tokens equal",
                        policy, worst,
                        std::mismatch(tokens.begin(), tokens.end(), bf16_tokens.begin()).first - tokens.begin(),
                        tokens.size()));
    CHECK(worst >= bar);
    CHECK(worst < 1.0);  // the pages really are quantized
    auto graphed = load(dir.path(), true, 128, options);
    run_sequence(*graphed->model, prompt, steps, graphed_tokens, fmt::format("int{} pages, graphs", policy), false);
    CHECK(graphed_tokens == tokens);
  }
}

// A quantized policy the model's shape cannot use is refused when the cache
// is made, naming the shape and what would work; quant_policy 3 when the
// policy is made.
TEST_CASE("kv_cuda refuses quant_policy it cannot serve with a clear error") {
  auto registry = std::make_unique<core::PluginRegistry>();
  registry->load_file(llama_test::test_plugin_dir() / "hostrun_kv_cuda.so");
  const Device gpu{DeviceKind::cuda, 0};
  Settings bad;
  bad.set("quant_policy", int64_t(3));
  auto refused = registry->create<KvCachePolicy>("kv_cuda", bad, nullptr, "", gpu);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().message().find("expected 0 (bf16/f16 pages), 8 (int8) or 4 (int4), found 3") !=
        std::string::npos);
  Settings int8;
  int8.set("quant_policy", int64_t(8));
  auto policy = registry->create<KvCachePolicy>("kv_cuda", int8, nullptr, "", gpu);
  REQUIRE_MESSAGE(policy.has_value(), policy.status().message());
  CHECK((*policy)->bytes_per_block(KvShape{32, 8, 128, 64, DType::bf16}) == size_t(64) * 67584);
  auto odd_head = (*policy)->allocate(KvShape{2, 2, 96, 16, DType::bf16}, 4, gpu);
  REQUIRE_FALSE(odd_head.has_value());
  CHECK(odd_head.status().message().find("head_dim 64 or 128") != std::string::npos);
  CHECK(odd_head.status().message().find("head_dim 96") != std::string::npos);
}

namespace {

// Greedy replies; with `top2`, each reply token's two most likely ids and logprobs.
std::vector<std::vector<TokenId>> run_engine(const fs::path& dir, const std::vector<std::vector<TokenId>>& prompts,
                                             int max_tokens, int64_t num_blocks, bool one_at_a_time,
                                             uint64_t* preemptions, bool overlap = true,
                                             uint64_t* overlapped_steps = nullptr,
                                             std::vector<std::vector<TokenLogprob>>* top2 = nullptr) {
  auto loaded = load(dir, true, 0);
  core::EngineParts parts;
  parts.model = loaded->model;
  parts.kv_policy = loaded->policy;
  parts.tokenizer = std::make_shared<hostrun::testing::LetterTokenizer>(loaded->model->info().vocab_size);
  parts.model_name = "llama_cuda";
  core::EngineConfig config;
  config.num_kv_blocks = num_blocks;
  config.cache_block_seq_len = 16;
  config.max_batch_size = 64;
  config.max_prefill_token_num = 256;
  config.decode_reserve_tokens = 0;  // the tight runs must preempt
  config.overlap_steps = overlap;
  auto engine = core::Engine::start(config, std::move(parts));
  REQUIRE_MESSAGE(engine.has_value(), engine.status().message());
  std::vector<std::vector<TokenId>> out(prompts.size());
  if (top2) top2->assign(prompts.size(), {});
  std::vector<std::future<void>> done;
  auto submit = [&](size_t i) {
    auto promise = std::make_shared<std::promise<void>>();
    done.push_back(promise->get_future());
    GenerationRequest request;
    request.input = prompts[i];
    request.sampling.temperature = 0;
    request.sampling.max_tokens = max_tokens;
    request.sampling.ignore_eos = true;
    if (top2) request.sampling.top_logprobs = 2;
    auto id = (*engine)->submit(std::move(request), [&out, i, promise, top2](const StreamEvent& e) {
      out[i].insert(out[i].end(), e.token_ids.begin(), e.token_ids.end());
      if (top2) (*top2)[i].insert((*top2)[i].end(), e.logprobs.begin(), e.logprobs.end());
      if (e.finish != FinishReason::none) promise->set_value();
    });
    REQUIRE_MESSAGE(id.has_value(), id.status().message());
  };
  for (size_t i = 0; i < prompts.size(); ++i) {
    submit(i);
    if (one_at_a_time) done.back().wait();
  }
  for (auto& f : done) f.wait();
  (*engine)->wait_idle();
  if (preemptions) *preemptions = (*engine)->stats().preemptions;
  if (overlapped_steps) *overlapped_steps = (*engine)->stats().overlapped_steps;
  engine->reset();
  return out;
}

}  // namespace

// Steps overlap (the engine submits step N+1 before collecting step N, decode
// tokens taken on the GPU) except in `one_step`, which runs the batched case
// one step at a time. Alone and batched take different products (small_gemm
// at one row, cuBLAS above, whose kernel depends on the batch and the card),
// so bit-equality is not promised: a reply that differs must first differ
// where the alone run's top two tokens were a near-tie (their logprobs
// within kNearTie), and most replies must be equal throughout.
TEST_CASE("llama_cuda on the engine: concurrent requests equal each alone, also under preemption") {
  TempDir dir("engine");
  write_checkpoint(dir.path(), shape(512, 8, 2, 128, 2, 400, false), 5);
  std::mt19937 rng(3);
  std::vector<std::vector<TokenId>> prompts(48);
  for (auto& p : prompts) {
    p.resize(1 + rng() % 120);
    for (auto& id : p) id = TokenId(rng() % 400);
  }
  std::vector<std::vector<TokenLogprob>> top2;
  const auto alone = run_engine(dir.path(), prompts, 20, 1024, true, nullptr, true, nullptr, &top2);
  uint64_t overlapped = 0;
  const auto together = run_engine(dir.path(), prompts, 20, 1024, false, nullptr, true, &overlapped);
  const auto one_step = run_engine(dir.path(), prompts, 20, 1024, false, nullptr, false);
  uint64_t preemptions = 0;
  const auto tight = run_engine(dir.path(), prompts, 20, 40, false, &preemptions);
  constexpr float kNearTie = 0.05f;  // nats: bf16 products in another order move logits by ~1e-2
  // Equal replies; a differing one is checked to part at a near-tie.
  auto count_equal = [&](const std::vector<std::vector<TokenId>>& run, const char* mode) {
    int equal = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      REQUIRE(run[i].size() == alone[i].size());
      REQUIRE(top2[i].size() == alone[i].size());
      const size_t at = size_t(std::mismatch(run[i].begin(), run[i].end(), alone[i].begin()).first - run[i].begin());
      if (at == run[i].size()) {
        ++equal;
        continue;
      }
      const TokenLogprob& first = top2[i][at];
      REQUIRE(first.top.size() == 2);
      const float margin = first.top[0].second - first.top[1].second;
      CHECK_MESSAGE(margin < kNearTie, fmt::format("{}: prompt {} parts from alone at token {} ({} vs {}), where alone's "
                                                   "top two logprobs are {:.4f} apart",
                                                   mode, i, at, run[i][at], alone[i][at], margin));
      CHECK_MESSAGE(run[i][at] == first.top[1].first,
                    fmt::format("{}: prompt {} token {}: {} is not alone's second choice {}", mode, i, at, run[i][at],
                                first.top[1].first));
    }
    return equal;
  };
  const int equal_together = count_equal(together, "batched");
  const int equal_one_step = count_equal(one_step, "one step at a time");
  const int equal_tight = count_equal(tight, "tight cache");
  MESSAGE(fmt::format("batched: {}/{} equal to alone ({} overlapped steps); one step at a time: {}/{}; tight cache "
                      "({} preemptions): {}/{}; the others part at near-ties",
                      equal_together, prompts.size(), overlapped, equal_one_step, prompts.size(), preemptions,
                      equal_tight, prompts.size()));
  CHECK(overlapped > 0);
  CHECK(equal_one_step >= int(prompts.size()) * 3 / 4);
  CHECK(equal_together >= int(prompts.size()) * 3 / 4);
  CHECK(equal_tight >= int(prompts.size()) * 3 / 4);
  CHECK(preemptions > 0);
}

int main(int argc, char** argv) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    fmt::print(stderr, "test_llama_cuda: no CUDA device\n");
    return 2;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
