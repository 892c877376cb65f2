// The quantizer path end to end: llama_cpu loads every linear layer through
// the test_rtn_int8 quantizer (tests/plugins/rtn_quantizer.cpp) and computes
// exactly what the dense model computes on the dequantized weights.
#include <doctest/doctest.h>

#include <map>
#include <optional>

#include "llama_test_util.hpp"

using namespace llama_test;

namespace {

// Passes every call to the real quantizer and keeps what the model asked for;
// each layer it hands back counts its forward calls.
class CountingQuantizer final : public Quantizer {
 public:
  class CountingLayer final : public LinearLayer {
   public:
    explicit CountingLayer(PluginPtr<LinearLayer> real) : real_(std::move(real)) {}
    LinearInfo info() const noexcept override { return real_->info(); }
    uint32_t fused_epilogues(int64_t rows) const noexcept override { return real_->fused_epilogues(rows); }
    size_t workspace_bytes(int64_t rows) const noexcept override { return real_->workspace_bytes(rows); }
    Status forward(const LinearCall& call, const ExecContext& exec) noexcept override {
      ++forward_calls;
      return real_->forward(call, exec);
    }
    Status dequantize(std::span<float> weight) const noexcept override { return real_->dequantize(weight); }
    int forward_calls = 0;

   private:
    PluginPtr<LinearLayer> real_;
  };
  struct Request {
    std::vector<std::string> prefixes;
    const WeightSource* weights = nullptr;
    Device device{};
    DType activation_dtype = DType::bf16;
    int64_t max_rows = 0;
    CountingLayer* layer = nullptr;  // owned by the model
  };

  explicit CountingQuantizer(Quantizer& real) : real_(real) {}
  std::string format() const noexcept override { return real_.format(); }
  Result<PluginPtr<LinearLayer>> load_linear(const LinearLoad& load) noexcept override {
    auto made = real_.load_linear(load);
    if (!made) return made.status();
    Request request{std::vector<std::string>(load.prefixes.begin(), load.prefixes.end()), load.weights, load.device,
                    load.activation_dtype, load.max_rows, nullptr};
    auto counting = make_pinned<CountingLayer>(LibraryPin{}, std::move(made.value()));
    request.layer = counting.get();
    requests.push_back(std::move(request));
    return PluginPtr<LinearLayer>(std::move(counting));
  }
  Status quantize(const QuantizeJob& job) noexcept override { return real_.quantize(job); }

  std::vector<Request> requests;

 private:
  Quantizer& real_;
};

struct RtnPlugin {
  std::unique_ptr<core::PluginRegistry> registry = std::make_unique<core::PluginRegistry>();
  core::PluginHandle<Quantizer> quantizer;
  RtnPlugin() {
    registry->load_file(fs::path(HOSTRUN_FIXTURE_PLUGIN_DIR) / "hostrun_test_rtn_int8.so");
    for (const auto& refused : registry->refused()) FAIL(refused.file.string() << ": " << refused.reason);
    auto made = registry->create<Quantizer>("test_rtn_int8", Settings{}, nullptr);
    REQUIRE_MESSAGE(made.has_value(), made.status().message());
    quantizer = made.value();
  }
};

// The test's own round-to-nearest-even int8 of each row, dequantized.
std::vector<float> rtn_dequantized(const std::vector<double>& weight, int64_t columns) {
  std::vector<float> out(weight.size());
  for (size_t row = 0; row * size_t(columns) < weight.size(); ++row) {
    const double* w = weight.data() + row * size_t(columns);
    float largest = 0;
    for (int64_t i = 0; i < columns; ++i) largest = std::max(largest, std::abs(float(w[i])));
    const float scale = largest / 127.0f;
    for (int64_t i = 0; i < columns; ++i) {
      const float q = scale == 0 ? 0.0f : std::nearbyint(float(w[i]) / scale);
      out[row * size_t(columns) + size_t(i)] = q * scale;
    }
  }
  return out;
}

bool is_linear_weight(const std::string& name) {
  for (const char* linear : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.ends_with(std::string(linear) + ".weight")) return true;
  return false;
}

// A copy of the checkpoint in `from` with every linear weight replaced by
// its int8 round trip (as f32) and the tensors in `drop` left out.
void write_variant(const fs::path& from, const fs::path& to, bool dequantize_linears,
                   const std::vector<std::string>& drop = {}) {
  fs::create_directories(to);
  for (const char* file : {"config.json", "generation_config.json"}) fs::copy_file(from / file, to / file);
  auto source = checkpoint::ModelDirectory::open(from);
  REQUIRE_MESSAGE(source.has_value(), source.status().message());
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  for (const std::string& name : source.value()->tensor_names()) {
    if (std::find(drop.begin(), drop.end(), name) != drop.end()) continue;
    const TensorView view = source.value()->tensor(name).value();
    std::vector<int64_t> shape(view.shape.begin(), view.shape.begin() + view.rank);
    DType dtype = view.dtype;
    if (dequantize_linears && is_linear_weight(name)) {
      const std::vector<float> values = rtn_dequantized(tensor_values(*source.value(), name), shape[1]);
      const auto* bytes = reinterpret_cast<const std::byte*>(values.data());
      storage.emplace_back(bytes, bytes + values.size() * sizeof(float));
      dtype = DType::f32;
    } else {
      const auto* bytes = static_cast<const std::byte*>(view.data);
      storage.emplace_back(bytes, bytes + view.nbytes());
    }
    tensors.push_back({name, dtype, shape, std::span<const std::byte>(storage.back())});
  }
  Status written = checkpoint::write_safetensors(to / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
}

std::vector<std::vector<float>> generate(Model& model, const std::vector<TokenId>& prompt) {
  Request request(prompt);
  StepDriver driver(model, 256, 16);
  std::vector<std::vector<float>> logits;
  for (int32_t chunk : {17, int32_t(prompt.size()) - 17, 1, 1, 1, 1}) {
    auto outcome = driver.run({{&request, chunk}});
    REQUIRE_MESSAGE(outcome.status.is_ok(), outcome.status.message());
    if (!outcome.output.logits.empty()) logits.push_back(outcome.output.logits.at(0));
  }
  return logits;
}

}  // namespace

TEST_CASE("test_rtn_int8: every linear layer is the quantizer's, and the logits are the dense model's on its weights") {
  TempDir dir("rtn"), twin_dir("rtn_twin");
  llama::LlamaConfig config = small_config();
  config.num_key_value_heads = 1;
  write_checkpoint(dir.path(), config, 31);
  randomize_norms(dir.path(), 31);
  write_variant(dir.path(), twin_dir.path() / "m", true);

  RtnPlugin rtn;
  CHECK(rtn.quantizer->format() == "rtn-int8");
  CountingQuantizer counting(*rtn.quantizer);
  auto quantized = load(dir.path(), 1, "f32", 256, 16, {}, &counting);

  // What llama_cpu asked for: its four layers per decoder layer, fused in checkpoint order.
  std::vector<std::vector<std::string>> want_prefixes;
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    want_prefixes.push_back({p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"});
    want_prefixes.push_back({p + "self_attn.o_proj"});
    want_prefixes.push_back({p + "mlp.gate_proj", p + "mlp.up_proj"});
    want_prefixes.push_back({p + "mlp.down_proj"});
  }
  REQUIRE(counting.requests.size() == want_prefixes.size());
  for (size_t i = 0; i < want_prefixes.size(); ++i) {
    const auto& request = counting.requests[i];
    CAPTURE(i);
    CHECK(request.prefixes == want_prefixes[i]);
    CHECK(request.device.kind == DeviceKind::cpu);
    CHECK(request.activation_dtype == DType::f32);
    CHECK(request.max_rows > 0);
    CHECK(request.weights == quantized->weights.get());
    // The layer holds the int8 round trip of the stacked weights, rounded as the test rounds them.
    const LinearInfo info = request.layer->info();
    CHECK(info.format == "rtn-int8");
    std::vector<float> stacked;
    for (const std::string& prefix : request.prefixes) {
      const auto rows = rtn_dequantized(tensor_values(*quantized->weights, prefix + ".weight"), info.in_features);
      stacked.insert(stacked.end(), rows.begin(), rows.end());
    }
    std::vector<float> layer_weight(size_t(info.out_features * info.in_features));
    REQUIRE(request.layer->dequantize(layer_weight).is_ok());
    CHECK(layer_weight == stacked);
  }
  // int8 values and a scale per row take less than f32 rows.
  auto dense = load(dir.path());
  CHECK(quantized->model->info().weight_bytes < dense->model->info().weight_bytes);

  const std::vector<TokenId> prompt = [] {
    std::mt19937 rng(77);
    std::vector<TokenId> ids(41);
    for (auto& id : ids) id = TokenId(rng() % 300);
    return ids;
  }();
  const auto got = generate(*quantized->model, prompt);
  for (const auto& request : counting.requests) CHECK(request.layer->forward_calls == 6);  // one call per step

  auto twin = load(twin_dir.path() / "m");
  const auto want = generate(*twin->model, prompt);
  const auto unquantized = generate(*dense->model, prompt);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    // Within f32 rounding (both sum in ref::gemm's order, so today they agree to the bit).
    CHECK(relative_error(got[i], want[i]) < 1e-5);
    // int8 rounding of these weights moves the logits by about 3e-3.
    CHECK(relative_error(got[i], unquantized[i]) > 1e-3);
  }
}

TEST_CASE("test_rtn_int8: the quantizer's errors reach the caller of load, naming the layer") {
  TempDir dir("rtn_missing");
  write_checkpoint(dir.path(), small_config(), 3);
  write_variant(dir.path(), dir.path() / "m", false, {"model.layers.1.self_attn.k_proj.weight"});
  RtnPlugin rtn;
  auto refused = try_load(dir.path() / "m", 1, "f32", 16, 16, {}, rtn.quantizer.get());
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().code() == ErrorCode::not_found);
  CHECK(refused.status().message().find("the quantizer (rtn-int8) could not build model.layers.1.self_attn.q_proj + "
                                        "model.layers.1.self_attn.k_proj + model.layers.1.self_attn.v_proj") !=
        std::string::npos);
  CHECK(refused.status().message().find("model.layers.1.self_attn.k_proj.weight") != std::string::npos);
  CHECK(rtn.quantizer->quantize(QuantizeJob{}).code() == ErrorCode::unsupported);
}
