// llama_cpu's calibration hook (Model::observe_linear_inputs) against the
// dense oracle's linear-layer inputs, and its independence from the KV cache.
#include <doctest/doctest.h>

#include <map>

#include "llama_test_util.hpp"

using namespace llama_test;

namespace {

// Keeps every report; the checks run after the call (a failing REQUIRE must
// not throw through the model's noexcept boundary).
class RecordingObserver final : public CalibrationObserver {
 public:
  struct Input {
    std::vector<float> values;  // [tokens, in_features]
    int64_t tokens = 0;
    int64_t in_features = 0;
    bool host_f32_contiguous = false;
  };
  std::vector<std::string> order;
  std::map<std::string, Input> inputs;

  void on_linear_input(std::string_view linear, const TensorView& x) noexcept override {
    Input input;
    input.host_f32_contiguous =
        x.rank == 2 && x.dtype == DType::f32 && x.device.kind == DeviceKind::cpu && x.is_contiguous() && x.data;
    if (input.host_f32_contiguous) {
      input.tokens = x.shape[0];
      input.in_features = x.shape[1];
      input.values.assign(x.as<const float>(), x.as<const float>() + x.numel());
    }
    order.emplace_back(linear);
    inputs[std::string(linear)] = std::move(input);
  }
};

std::vector<std::string> expected_order(int64_t layers) {
  std::vector<std::string> names;
  for (int64_t l = 0; l < layers; ++l)
    for (const char* linear : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      names.push_back(fmt::format("model.layers.{}.{}", l, linear));
  return names;
}

std::vector<TokenId> random_ids(size_t length, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<TokenId> ids(length);
  for (auto& id : ids) id = TokenId(rng() % 300);
  return ids;
}

}  // namespace

TEST_CASE("observe_linear_inputs: every linear layer's input, as the dense oracle computes it, without a KV cache") {
  TempDir dir("calibration");
  llama::LlamaConfig config = small_config();
  config.num_key_value_heads = 1;
  write_checkpoint(dir.path(), config, 13);
  randomize_norms(dir.path(), 13);
  auto loaded = load(dir.path(), 2, "f32", 0);  // no KV cache allocated at all
  const std::vector<TokenId> tokens = random_ids(37, 5);  // more than two 16-token pages

  RecordingObserver observer;
  Status observed = loaded->model->observe_linear_inputs(tokens, observer);
  REQUIRE_MESSAGE(observed.is_ok(), observed.message());
  CHECK(observer.order == expected_order(config.num_hidden_layers));

  std::map<std::string, std::vector<std::vector<double>>> want;
  DenseLlama(*loaded->weights, config).forward(tokens, [&](const std::string& linear, const auto& x) { want[linear] = x; });
  REQUIRE(want.size() == observer.inputs.size());
  for (const auto& [name, rows] : want) {
    CAPTURE(name);
    const auto& got = observer.inputs.at(name);
    REQUIRE(got.host_f32_contiguous);
    REQUIRE(got.tokens == int64_t(tokens.size()));
    REQUIRE(got.in_features == int64_t(rows[0].size()));
    std::vector<double> flat;
    for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
    CHECK(relative_error(got.values, flat) < 1e-5);
  }
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    // A fused layer reports its one input under each of its prefixes.
    CHECK(observer.inputs.at(p + "self_attn.k_proj").values == observer.inputs.at(p + "self_attn.q_proj").values);
    CHECK(observer.inputs.at(p + "self_attn.v_proj").values == observer.inputs.at(p + "self_attn.q_proj").values);
    CHECK(observer.inputs.at(p + "mlp.up_proj").values == observer.inputs.at(p + "mlp.gate_proj").values);
  }

  SUBCASE("bad calls are errors that say why") {
    RecordingObserver unused;
    Status empty = loaded->model->observe_linear_inputs({}, unused);
    CHECK(empty.code() == ErrorCode::invalid_argument);
    CHECK(empty.message().find("at least one token") != std::string::npos);
    const std::vector<TokenId> outside{5, 300, 7};
    Status bad = loaded->model->observe_linear_inputs(outside, unused);
    CHECK(bad.code() == ErrorCode::invalid_argument);
    CHECK(bad.message().find("token id 300") != std::string::npos);
    CHECK(unused.order.empty());
  }
}

TEST_CASE("observe_linear_inputs leaves the model's KV cache as it was") {
  TempDir dir("calibration_cache");
  write_checkpoint(dir.path(), small_config(), 21);
  auto loaded = load(dir.path(), 1, "f32", 64);
  const std::vector<TokenId> prompt = random_ids(20, 9);
  Request undisturbed(prompt), interrupted(prompt);
  // Both requests in flight in one cache (different blocks); calibration runs
  // between steps of the second, with as many tokens as the model's cache has
  // slots, so writing into that cache would overwrite both requests' pages.
  StepDriver driver(*loaded->model, 64, 16);
  REQUIRE(driver.run({{&undisturbed, 20}}).status.is_ok());
  REQUIRE(driver.run({{&interrupted, 20}}).status.is_ok());
  std::vector<std::vector<float>> want, got;
  for (int step = 0; step < 6; ++step) {
    auto a = driver.run({{&undisturbed, 1}});
    REQUIRE(a.status.is_ok());
    want.push_back(a.output.logits.at(0));
    if (step == 2) {
      RecordingObserver observer;
      REQUIRE(loaded->model->observe_linear_inputs(random_ids(64 * 16, 3), observer).is_ok());
      CHECK(observer.order.size() == 14);
    }
    auto b = driver.run({{&interrupted, 1}});
    REQUIRE(b.status.is_ok());
    got.push_back(b.output.logits.at(0));
  }
  CHECK(got == want);
  CHECK(interrupted.tokens == undisturbed.tokens);
}

TEST_CASE("observe_linear_inputs before load is an error") {
  auto registry = load_registry();
  Settings settings;
  settings.set("threads", int64_t(1));
  auto model = registry->create<Model>("llama_cpu", settings, nullptr);
  REQUIRE(model.has_value());
  RecordingObserver observer;
  const std::vector<TokenId> tokens{1, 2};
  Status s = model.value()->observe_linear_inputs(tokens, observer);
  CHECK(s.code() == ErrorCode::invalid_argument);
  CHECK(s.message().find("not loaded") != std::string::npos);
}

namespace {

// The logits of the last prompt position, the prompt computed in one chunk.
std::vector<float> last_logits(Model& model, const std::vector<TokenId>& prompt) {
  Request request(prompt);
  StepDriver driver(model, 64, 16);
  auto outcome = driver.run({{&request, int32_t(prompt.size())}});
  REQUIRE_MESSAGE(outcome.status.is_ok(), outcome.status.message());
  REQUIRE(!outcome.output.logits.empty());
  return outcome.output.logits.at(0);
}

// Copies the f32 checkpoint in `from` to `to` with random positive scales
// folded into every group that has producers: producers' channels divided,
// readers' columns multiplied (or, with `readers_only`, the readers alone: a
// change of the model, the control).
void fold_random_scales(const fs::path& from, const fs::path& to, const std::vector<LinearInputGroup>& groups,
                        bool readers_only) {
  auto opened = checkpoint::ModelDirectory::open(from);
  REQUIRE_MESSAGE(opened.has_value(), opened.status().message());
  const auto& source = *opened.value();
  std::map<std::string, std::vector<float>> values;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const std::string& name : source.tensor_names()) {
    const TensorView view = source.tensor(name).value();
    REQUIRE(view.dtype == DType::f32);
    values[name].assign(view.as<const float>(), view.as<const float>() + view.numel());
    shapes[name].assign(view.shape.begin(), view.shape.begin() + view.rank);
  }
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> exponent(-1.0f, 1.0f);
  for (const LinearInputGroup& group : groups) {
    if (group.producers.empty()) continue;
    const size_t in = size_t(shapes.at(group.linears.front().prefix + ".weight")[1]);
    std::vector<float> s(in);
    for (float& v : s) v = std::exp(exponent(rng));
    for (const CalibratedLinear& linear : group.linears) {
      std::vector<float>& w = values.at(linear.prefix + ".weight");
      for (size_t o = 0; o < w.size() / in; ++o)
        for (size_t i = 0; i < in; ++i) w[o * in + i] *= s[i];
    }
    if (readers_only) continue;
    for (const std::string& name : group.producers) {
      std::vector<float>& p = values.at(name);
      REQUIRE(size_t(shapes.at(name)[0]) == in);
      const size_t slice = p.size() / in;
      for (size_t c = 0; c < in; ++c)
        for (size_t j = 0; j < slice; ++j) p[c * slice + j] /= s[c];
    }
  }
  fs::create_directories(to);
  fs::copy_file(from / "config.json", to / "config.json");
  std::vector<checkpoint::TensorData> tensors;
  for (const auto& [name, v] : values)
    tensors.push_back({name, DType::f32, shapes.at(name),
                       std::span<const std::byte>(reinterpret_cast<const std::byte*>(v.data()), v.size() * 4)});
  Status written = checkpoint::write_safetensors(to / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
}

}  // namespace

// The contract a quantizer relies on (Model::linear_input_groups): every
// linear is in exactly one group, its members see one input, and scales
// folded as the groups say leave the model's function unchanged.
TEST_CASE("linear_input_groups: folding scales as the groups say leaves the logits as they were") {
  for (const int64_t kv_heads : {int64_t(1), int64_t(0)}) {  // grouped-query attention; 0: as many as query heads
    llama::LlamaConfig config = small_config();
    config.num_key_value_heads = kv_heads == 0 ? config.num_attention_heads : kv_heads;
    CAPTURE(config.num_key_value_heads);
    TempDir dir("input_groups");
    write_checkpoint(dir / "dense", config, 31, DType::f32);
    auto loaded = load(dir / "dense", 1, "f32", 64);
    const std::vector<LinearInputGroup> groups = loaded->model->linear_input_groups();
    REQUIRE(groups.size() == size_t(4 * config.num_hidden_layers));

    RecordingObserver observer;
    const std::vector<TokenId> prompt = random_ids(23, 4);
    REQUIRE(loaded->model->observe_linear_inputs(prompt, observer).is_ok());
    std::map<std::string, int> membership;
    for (const LinearInputGroup& group : groups)
      for (const CalibratedLinear& linear : group.linears) {
        ++membership[linear.prefix];
        CHECK(observer.inputs.at(linear.prefix).values == observer.inputs.at(group.linears.front().prefix).values);
      }
    CHECK(membership.size() == observer.inputs.size());
    for (const auto& [prefix, count] : membership) CHECK_MESSAGE(count == 1, prefix);
    // o_proj can be scaled only when v's rows are o's columns one to one.
    CHECK(groups[1].producers.empty() == (config.num_key_value_heads != config.num_attention_heads));
    CHECK(groups[0].linears[0].feeds_attention_logits);
    CHECK(groups[0].linears[1].feeds_attention_logits);
    CHECK_FALSE(groups[0].linears[2].feeds_attention_logits);

    const std::vector<float> want = last_logits(*loaded->model, prompt);
    fold_random_scales(dir / "dense", dir / "folded", groups, false);
    fold_random_scales(dir / "dense", dir / "readers_only", groups, true);
    auto folded = load(dir / "folded", 1, "f32", 64);
    auto changed = load(dir / "readers_only", 1, "f32", 64);
    CHECK(relative_error(last_logits(*folded->model, prompt), want) < 1e-4);
    CHECK(relative_error(last_logits(*changed->model, prompt), want) > 1e-2);
  }
}
