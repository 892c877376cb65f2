// plugins/onnx_vision's graph loader and CPU executor. Test suite
// "ort_parity" runs every case of tests/fixtures/onnx against onnxruntime's
// outputs (written by ort_outputs.mjs into $HOSTRUN_ORT_OUTPUTS; ctest
// onnx_ort_parity); the rest needs no oracle: load-time refusals, external
// data, input checks.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "onnx_vision/cpu_executor.hpp"
#include "onnx_vision/graph.hpp"
#include "onnx_vision/llava_graph.hpp"

#ifdef HOSTRUN_ONNX_VISION_CUDA
#include <cuda_runtime.h>

#include "onnx_vision/cuda_executor.hpp"
#endif

namespace ov = hostrun::onnx_vision;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = HOSTRUN_ONNX_FIXTURE_DIR;

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot read " << path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

ov::HostTensor read_tensor(const fs::path& path, const std::string& dtype, std::vector<std::int64_t> shape) {
  const std::string bytes = read_bytes(path);
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  if (dtype == "float32") {
    REQUIRE(bytes.size() == std::size_t(n) * 4);
    std::vector<float> v(static_cast<std::size_t>(n));
    std::memcpy(v.data(), bytes.data(), bytes.size());
    return ov::HostTensor::floats(std::move(shape), std::move(v));
  }
  REQUIRE(dtype == "int64");
  REQUIRE(bytes.size() == std::size_t(n) * 8);
  std::vector<std::int64_t> v(static_cast<std::size_t>(n));
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return ov::HostTensor::ints(std::move(shape), std::move(v));
}

// A fixture case's inputs (cases.json: name, file, dtype, shape of each).
std::map<std::string, ov::HostTensor> case_inputs(const nlohmann::json& c) {
  std::map<std::string, ov::HostTensor> inputs;
  for (const auto& input : c["inputs"])
    inputs[input["name"]] = read_tensor(kFixtures / input["file"].get<std::string>(), input["dtype"],
                                        input["shape"].get<std::vector<std::int64_t>>());
  return inputs;
}

// A float graph input of shape [batch, width], the batch symbolic.
void add_batch_input(onnx::GraphProto& g, const std::string& name, std::int64_t width) {
  auto* x = g.add_input();
  x->set_name(name);
  auto* type = x->mutable_type()->mutable_tensor_type();
  type->set_elem_type(onnx::TensorProto::FLOAT);
  type->mutable_shape()->add_dim()->set_dim_param("batch");
  type->mutable_shape()->add_dim()->set_dim_value(width);
}

// A one-node model: `op` from inputs x (float [2, 3]) to y.
onnx::ModelProto one_node(const std::string& op, int opset = 17, const std::string& domain = "") {
  onnx::ModelProto model;
  model.set_ir_version(8);
  auto* import = model.add_opset_import();
  import->set_domain("");
  import->set_version(opset);
  if (!domain.empty()) {
    auto* other = model.add_opset_import();
    other->set_domain(domain);
    other->set_version(1);
  }
  auto* g = model.mutable_graph();
  g->set_name("g");
  auto* node = g->add_node();
  node->set_op_type(op);
  node->set_name("the_node");
  node->set_domain(domain);
  node->add_input("x");
  node->add_output("y");
  add_batch_input(*g, "x", 3);
  g->add_output()->set_name("y");
  return model;
}

hostrun::Result<ov::Graph> load_model(const onnx::ModelProto& model, ov::GraphLoadOptions options = {}) {
  std::string bytes;
  REQUIRE(model.SerializeToString(&bytes));
  return ov::load_graph(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), options);
}

}  // namespace

TEST_CASE("ort_parity" * doctest::test_suite("ort_parity")) {
  const char* ort_dir = std::getenv("HOSTRUN_ORT_OUTPUTS");
  REQUIRE_MESSAGE(ort_dir != nullptr, "HOSTRUN_ORT_OUTPUTS names the folder ort_outputs.mjs wrote (ctest onnx_ort_parity)");
  const nlohmann::json cases = nlohmann::json::parse(read_bytes(kFixtures / "cases.json"));
  const nlohmann::json ort = nlohmann::json::parse(read_bytes(fs::path(ort_dir) / "ort.json"));
  REQUIRE(cases.size() == 10);
  for (const auto& c : cases) {
    const std::string name = c["name"];
    CAPTURE(name);
    auto graph = ov::load_graph_file(kFixtures / c["model"].get<std::string>(), {});
    REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
    const std::map<std::string, ov::HostTensor> inputs = case_inputs(c);
    auto outputs = ov::run_on_cpu(graph.value(), inputs);
    REQUIRE_MESSAGE(outputs.has_value(), outputs.status().message());
    REQUIRE(outputs->size() == c["outputs"].size());
    for (std::size_t k = 0; k < outputs->size(); ++k) {
      const std::string output = c["outputs"][k];
      CAPTURE(output);
      const auto& meta = ort[name][output];
      const ov::HostTensor expected = read_tensor(fs::path(ort_dir) / (name + "." + output + ".bin"),
                                                  meta["type"], meta["dims"].get<std::vector<std::int64_t>>());
      const ov::HostTensor& ours = (*outputs)[k];
      // Shapes agree with onnxruntime's and with what shape inference fixed at load.
      CHECK(ours.shape == expected.shape);
      CHECK(graph->outputs[k].shape == expected.shape);
      REQUIRE(ours.element == expected.element);
      if (ours.element == ov::Element::i64) {
        CHECK(ours.i == expected.i);
        continue;
      }
      REQUIRE(ours.f.size() == expected.f.size());
      double worst = 0.0;
      for (std::size_t e = 0; e < ours.f.size(); ++e) {
        const double err = std::fabs(double(ours.f[e]) - double(expected.f[e]));
        worst = std::max(worst, err / (2e-5 + 2e-4 * std::fabs(double(expected.f[e]))));
      }
      CHECK_MESSAGE(worst <= 1.0, name << "." << output << ": error " << worst << "x the f32 tolerance");
    }
  }
}

TEST_CASE("operators, opsets and domains outside what the executors run are refused at load, naming the node") {
  auto unsupported = load_model(one_node("Einsum"));
  REQUIRE_FALSE(unsupported.has_value());
  CHECK(unsupported.status().message().rfind(
            "node 0 'the_node' (Einsum, opset 17): operator Einsum is not supported by hostrun's ONNX executors "
            "(supported: Add, Cast,",
            0) == 0);
  CHECK(load_model(one_node("Relu", 13)).status().message() ==
        "the model imports ONNX opset 13; opsets 14 to 17 are supported");
  CHECK(load_model(one_node("Relu", 18)).status().message() ==
        "the model imports ONNX opset 18; opsets 14 to 17 are supported");
  CHECK(load_model(one_node("Custom", 17, "com.example")).status().message() ==
        "opset domain 'com.example' (version 1) is not supported: only the default ONNX domain is");
  const std::vector<std::uint8_t> garbage = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  CHECK(ov::load_graph(garbage, {}).status().message().rfind("not an ONNX model", 0) == 0);
  CHECK(ov::load_graph_file("/nonexistent/model.onnx", {}).status().code() == hostrun::ErrorCode::not_found);
}

TEST_CASE("input shapes: symbolic dims fixed at load, then checked at run") {
  const auto unfixed = load_model(one_node("Relu"));
  REQUIRE_FALSE(unfixed.has_value());
  CHECK(unfixed.status().message() == "input 'x': dimension 0 is not known after shape inference ('batch')");
  ov::GraphLoadOptions options;
  options.input_shapes["x"] = {2, 3};
  auto graph = load_model(one_node("Relu"), options);
  REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
  CHECK(graph->outputs[0].shape == std::vector<std::int64_t>{2, 3});
  const auto out = ov::run_on_cpu(*graph, {{"x", ov::HostTensor::floats({2, 3}, {-1, 2, -3, 4, -5, 6})}});
  REQUIRE(out.has_value());
  CHECK(out.value()[0].f == std::vector<float>{0, 2, 0, 4, 0, 6});
  CHECK(ov::run_on_cpu(*graph, {{"x", ov::HostTensor::floats({3, 2}, {1, 2, 3, 4, 5, 6})}}).status().message() ==
        "input 'x' must be float of shape [2, 3], got float of [3, 2]");
  CHECK(ov::run_on_cpu(*graph, {}).status().message() == "input 'x' was not given");
  CHECK(ov::run_on_cpu(*graph, {{"x", ov::HostTensor::floats({2, 3}, {1, 2, 3, 4, 5, 6})},
                                {"z", ov::HostTensor::floats({1}, {1})}})
            .status()
            .message() == "'z' is not an input of the graph");
  ov::GraphLoadOptions wrong;
  wrong.input_shapes["x"] = {2, 3, 4};
  CHECK(load_model(one_node("Relu"), wrong).status().message() == "input 'x' has 2 dimensions in the graph, 3 were given");
  ov::GraphLoadOptions unknown;
  unknown.input_shapes["pixels"] = {1};
  CHECK(load_model(one_node("Relu"), unknown).status().message() ==
        "input_shapes names 'pixels', which is not an input of the graph");
}

TEST_CASE("nodes out of topological order are refused") {
  onnx::ModelProto model = one_node("Relu");
  auto* g = model.mutable_graph();
  auto* first = g->add_node();  // y2 = Relu(y), then swap so it comes first
  first->set_op_type("Relu");
  first->set_name("early");
  first->add_input("y");
  first->add_output("y2");
  g->mutable_node()->SwapElements(0, 1);
  ov::GraphLoadOptions options;
  options.input_shapes["x"] = {1, 3};
  const auto graph = load_model(model, options);
  REQUIRE_FALSE(graph.has_value());
  CHECK(graph.status().message().find("input 'y' is used before any node produces it") != std::string::npos);
}

TEST_CASE("external data: read from the model's folder, never outside it") {
  const fs::path dir = fs::temp_directory_path() / "hostrun_onnx_external";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::vector<float> weights = {0.5f, -1.0f, 2.0f};
  {
    std::ofstream out(dir / "weights.bin", std::ios::binary);
    const std::uint32_t pad = 0;
    out.write(reinterpret_cast<const char*>(&pad), 4);  // the tensor at offset 4
    out.write(reinterpret_cast<const char*>(weights.data()), 12);
  }
  const auto model_with = [&](const std::string& location, const std::string& offset) {
    onnx::ModelProto model = one_node("Mul");
    auto* g = model.mutable_graph();
    g->mutable_node(0)->add_input("w");
    auto* w = g->add_initializer();
    w->set_name("w");
    w->set_data_type(onnx::TensorProto::FLOAT);
    w->add_dims(3);
    w->set_data_location(onnx::TensorProto::EXTERNAL);
    for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
             {"location", location}, {"offset", offset}, {"length", "12"}}) {
      auto* entry = w->add_external_data();
      entry->set_key(key);
      entry->set_value(value);
    }
    return model;
  };
  ov::GraphLoadOptions options;
  options.input_shapes["x"] = {1, 3};
  options.directory = dir;
  auto graph = load_model(model_with("weights.bin", "4"), options);
  REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
  const auto out = ov::run_on_cpu(*graph, {{"x", ov::HostTensor::floats({1, 3}, {2, 2, 2})}});
  REQUIRE(out.has_value());
  CHECK(out.value()[0].f == std::vector<float>{1.0f, -2.0f, 4.0f});
  CHECK(load_model(model_with("../weights.bin", "4"), options).status().message() ==
        "initializer 'w': external data location '../weights.bin' must be a file name inside the model's folder");
  CHECK(load_model(model_with("/etc/passwd", "0"), options).status().message() ==
        "initializer 'w': external data location '/etc/passwd' must be a file name inside the model's folder");
  CHECK(load_model(model_with("weights.bin", "8"), options).status().message().find("the tensor's data would end at byte 20") !=
        std::string::npos);
  CHECK(load_model(model_with("missing.bin", "0"), options).status().message().find("does not exist") != std::string::npos);
  fs::remove_all(dir);
}

// ---- LLaVA's vision graph, written from a config -------------------------------------

namespace {

// A toy LLaVA: 4 x 4 images of 2 x 2 patches (4 patches + CLS), width 8, 2 heads, 3 layers, features from
// hidden_states[-2] (two layers run), projector to width 6.
constexpr const char* kToyLlava = R"({
  "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 5,
  "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
  "text_config": {"model_type": "llama", "hidden_size": 6},
  "vision_config": {"model_type": "clip_vision_model", "hidden_size": 8, "intermediate_size": 16,
                    "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 4, "patch_size": 2}})";

struct Weights {
  std::map<std::string, std::pair<std::vector<std::int64_t>, std::vector<float>>> tensors;
  std::mt19937 rng{42};
  void add(const std::string& name, std::vector<std::int64_t> shape, float scale = 0.4f) {
    std::normal_distribution<float> normal(0.0f, scale);
    std::int64_t n = 1;
    for (std::int64_t d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = normal(rng);
    tensors[name] = {std::move(shape), std::move(v)};
  }
  const std::vector<float>& operator[](const std::string& name) const { return tensors.at(name).second; }
};

Weights toy_weights(const ov::LlavaVisionConfig& c, const ov::LlavaTensorNames& names) {
  Weights w;
  const std::int64_t d = c.hidden_size, tokens = c.patches_per_side() * c.patches_per_side() + 1;
  const std::string& v = names.vision;
  w.add(v + "embeddings.patch_embedding.weight", {d, c.num_channels, c.patch_size, c.patch_size});
  w.add(v + "embeddings.class_embedding", {d});
  w.add(v + "embeddings.position_embedding.weight", {tokens, d});
  const auto norm = [&](const std::string& p) {
    w.add(p + "weight", {d}, 0.3f);
    for (float& x : w.tensors[p + "weight"].second) x += 1.0f;
    w.add(p + "bias", {d}, 0.1f);
  };
  const auto linear = [&](const std::string& p, std::int64_t out, std::int64_t in) {
    w.add(p + "weight", {out, in});
    w.add(p + "bias", {out}, 0.1f);
  };
  norm(v + "pre_layrnorm.");
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = v + "encoder.layers." + std::to_string(l) + ".";
    norm(p + "layer_norm1.");
    norm(p + "layer_norm2.");
    for (const char* proj : {"q_proj.", "k_proj.", "v_proj.", "out_proj."}) linear(p + "self_attn." + proj, d, d);
    linear(p + "mlp.fc1.", c.intermediate_size, d);
    linear(p + "mlp.fc2.", d, c.intermediate_size);
  }
  linear(names.projector + "linear_1.", c.text_hidden_size, d);
  linear(names.projector + "linear_2.", c.text_hidden_size, c.text_hidden_size);
  return w;
}

// LLaVA's vision path written out plainly (HF's CLIPVisionModel and LlavaMultiModalProjector), in double.
std::vector<double> reference_features(const ov::LlavaVisionConfig& c, const ov::LlavaTensorNames& names,
                                       const Weights& w, const std::vector<float>& pixels) {
  const int d = c.hidden_size, p = c.patch_size, side = c.patches_per_side(), s = c.image_size;
  const int tokens = side * side + 1, heads = c.num_attention_heads, hd = d / heads;
  const std::string& v = names.vision;
  using Rows = std::vector<std::vector<double>>;
  Rows x(static_cast<std::size_t>(tokens), std::vector<double>(static_cast<std::size_t>(d)));
  const auto& patch = w[v + "embeddings.patch_embedding.weight"];
  for (int f = 0; f < d; ++f) {
    x[0][std::size_t(f)] = w[v + "embeddings.class_embedding"][std::size_t(f)];
    for (int py = 0; py < side; ++py)
      for (int px = 0; px < side; ++px) {
        double sum = 0.0;
        for (int ch = 0; ch < c.num_channels; ++ch)
          for (int ky = 0; ky < p; ++ky)
            for (int kx = 0; kx < p; ++kx)
              sum += pixels[std::size_t((ch * s + py * p + ky) * s + px * p + kx)] *
                     patch[std::size_t(((f * c.num_channels + ch) * p + ky) * p + kx)];
        x[std::size_t(1 + py * side + px)][std::size_t(f)] = sum;
      }
  }
  for (int t = 0; t < tokens; ++t)
    for (int f = 0; f < d; ++f) x[std::size_t(t)][std::size_t(f)] += w[v + "embeddings.position_embedding.weight"][std::size_t(t * d + f)];
  const auto layer_norm = [&](const Rows& in, const std::string& prefix) {
    Rows out = in;
    for (auto& row : out) {
      double mean = 0, var = 0;
      for (double e : row) mean += e;
      mean /= double(row.size());
      for (double e : row) var += (e - mean) * (e - mean);
      var /= double(row.size());
      for (std::size_t k = 0; k < row.size(); ++k)
        row[k] = (row[k] - mean) / std::sqrt(var + c.layer_norm_eps) * w[prefix + "weight"][k] + w[prefix + "bias"][k];
    }
    return out;
  };
  const auto linear = [&](const Rows& in, const std::string& prefix) {
    const auto& weight = w[prefix + "weight"];
    const auto& bias = w[prefix + "bias"];
    const std::size_t out_width = bias.size(), in_width = in[0].size();
    Rows out(in.size(), std::vector<double>(out_width));
    for (std::size_t r = 0; r < in.size(); ++r)
      for (std::size_t o = 0; o < out_width; ++o) {
        double sum = bias[o];
        for (std::size_t k = 0; k < in_width; ++k) sum += in[r][k] * weight[o * in_width + k];
        out[r][o] = sum;
      }
    return out;
  };
  const auto act = [](Rows in, const std::string& kind) {
    for (auto& row : in)
      for (double& e : row) e = kind == "quick_gelu" ? e / (1.0 + std::exp(-1.702 * e)) : 0.5 * e * (1.0 + std::erf(e / std::sqrt(2.0)));
    return in;
  };
  x = layer_norm(x, v + "pre_layrnorm.");
  for (int l = 0; l < c.layers_run(); ++l) {
    const std::string pre = v + "encoder.layers." + std::to_string(l) + ".";
    const Rows h = layer_norm(x, pre + "layer_norm1.");
    const Rows q = linear(h, pre + "self_attn.q_proj."), k = linear(h, pre + "self_attn.k_proj."), val = linear(h, pre + "self_attn.v_proj.");
    Rows context(static_cast<std::size_t>(tokens), std::vector<double>(static_cast<std::size_t>(d), 0.0));
    for (int head = 0; head < heads; ++head)
      for (int i = 0; i < tokens; ++i) {
        std::vector<double> score(static_cast<std::size_t>(tokens));
        double max = -1e300, sum = 0;
        for (int j = 0; j < tokens; ++j) {
          double dot = 0;
          for (int e = 0; e < hd; ++e) dot += q[std::size_t(i)][std::size_t(head * hd + e)] * k[std::size_t(j)][std::size_t(head * hd + e)];
          score[std::size_t(j)] = dot / std::sqrt(double(hd));
          max = std::max(max, score[std::size_t(j)]);
        }
        for (double& e : score) sum += (e = std::exp(e - max));
        for (int j = 0; j < tokens; ++j)
          for (int e = 0; e < hd; ++e)
            context[std::size_t(i)][std::size_t(head * hd + e)] += score[std::size_t(j)] / sum * val[std::size_t(j)][std::size_t(head * hd + e)];
      }
    const Rows attn = linear(context, pre + "self_attn.out_proj.");
    for (int t = 0; t < tokens; ++t)
      for (int f = 0; f < d; ++f) x[std::size_t(t)][std::size_t(f)] += attn[std::size_t(t)][std::size_t(f)];
    const Rows mlp = linear(act(linear(layer_norm(x, pre + "layer_norm2."), pre + "mlp.fc1."), c.hidden_act), pre + "mlp.fc2.");
    for (int t = 0; t < tokens; ++t)
      for (int f = 0; f < d; ++f) x[std::size_t(t)][std::size_t(f)] += mlp[std::size_t(t)][std::size_t(f)];
  }
  const Rows kept(x.begin() + (c.keep_cls ? 0 : 1), x.end());
  const Rows out = linear(act(linear(kept, names.projector + "linear_1."), c.projector_hidden_act), names.projector + "linear_2.");
  std::vector<double> flat;
  for (const auto& row : out) flat.insert(flat.end(), row.begin(), row.end());
  return flat;
}

}  // namespace

TEST_CASE("LLaVA's vision graph from a config matches the model written out plainly") {
  for (const bool transformers5 : {false, true}) {
    CAPTURE(transformers5);
    std::string text = kToyLlava;
    if (transformers5) text.replace(text.find("\"image_token_index\""), 19, "\"image_token_id\"   ");
    auto config = ov::parse_llava_vision_config(text, "config.json");
    REQUIRE_MESSAGE(config.has_value(), config.status().message());
    CHECK(config->layers_run() == 2);
    CHECK(config->tokens_per_image() == 4);
    CHECK(config->image_token_id == 5);
    const ov::LlavaTensorNames names = transformers5
        ? ov::LlavaTensorNames{"model.vision_tower.vision_model.", "model.multi_modal_projector."}
        : ov::LlavaTensorNames{"vision_tower.vision_model.", "multi_modal_projector."};
    const Weights weights = toy_weights(*config, names);
    std::set<std::string> asked;
    const onnx::ModelProto model = ov::llava_vision_graph(*config, names, [&](const std::string& name) {
      asked.insert(name);
      const auto& [shape, values] = weights.tensors.at(name);
      onnx::TensorProto t;
      t.set_data_type(onnx::TensorProto::FLOAT);
      for (std::int64_t dim : shape) t.add_dims(dim);
      t.set_raw_data(values.data(), values.size() * sizeof(float));
      return t;
    }, /*batch=*/2);
    // Weights of the third layer are never read (features come from hidden_states[-2]).
    CHECK(asked.size() == weights.tensors.size() - 16);
    auto graph = load_model(model);
    REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
    REQUIRE(graph->outputs.size() == 1);
    CHECK(graph->outputs[0].shape == std::vector<std::int64_t>{2, 4, 6});

    std::mt19937 rng(3);
    std::normal_distribution<float> normal;
    std::vector<float> pixels(2 * 3 * 4 * 4);
    for (float& p : pixels) p = normal(rng);
    const auto out = ov::run_on_cpu(*graph, {{"pixel_values", ov::HostTensor::floats({2, 3, 4, 4}, pixels)}});
    REQUIRE_MESSAGE(out.has_value(), out.status().message());
    const std::vector<float>& ours = out.value()[0].f;
    for (int b = 0; b < 2; ++b) {
      const std::vector<float> image(pixels.begin() + b * 48, pixels.begin() + (b + 1) * 48);
      const std::vector<double> expected = reference_features(*config, names, weights, image);
      REQUIRE(expected.size() == 24);
      for (std::size_t k = 0; k < expected.size(); ++k)
        CHECK(ours[std::size_t(b) * 24 + k] == doctest::Approx(expected[k]).epsilon(1e-4).scale(1.0));
    }
  }
}

TEST_CASE("LLaVA configs: CLIP's defaults, and refusals naming the key") {
  const auto defaults = ov::parse_llava_vision_config(
      R"({"vision_config": {}, "text_config": {"hidden_size": 4096}, "image_token_index": 32000})", "c.json");
  REQUIRE(defaults.has_value());
  CHECK(defaults->hidden_size == 768);
  CHECK(defaults->patch_size == 32);
  CHECK(defaults->tokens_per_image() == 49);
  CHECK(defaults->layers_run() == 11);
  const auto message = [](const std::string& text) { return ov::parse_llava_vision_config(text, "c.json").status().message(); };
  CHECK(message(R"({"text_config": {"hidden_size": 8}, "image_token_index": 1})") ==
        "c.json: \"vision_config\" is missing: not a LLaVA folder (LlavaForConditionalGeneration)");
  CHECK(message(R"({"vision_config": {"hidden_act": "silu"}, "text_config": {"hidden_size": 8}, "image_token_index": 1})") ==
        "c.json: \"vision_config.hidden_act\" 'silu' is not supported (quick_gelu, gelu, gelu_pytorch_tanh)");
  CHECK(message(R"({"vision_config": {}, "vision_feature_layer": [-2, -5], "text_config": {"hidden_size": 8}, "image_token_index": 1})") ==
        "c.json: \"vision_feature_layer\" must be one layer index (lists of layers are not supported), found [-2,-5]");
  CHECK(message(R"({"vision_config": {}, "vision_feature_layer": -14, "text_config": {"hidden_size": 8}, "image_token_index": 1})") ==
        "c.json: \"vision_feature_layer\" -14 is outside the 13 hidden states of a 12-layer encoder");
  CHECK(message(R"({"vision_config": {}, "vision_feature_select_strategy": "cls", "text_config": {"hidden_size": 8}, "image_token_index": 1})") ==
        "c.json: \"vision_feature_select_strategy\" 'cls' is not supported (default, full)");
  CHECK(message(R"({"vision_config": {"image_size": 100, "patch_size": 14}, "text_config": {"hidden_size": 8}, "image_token_index": 1})") ==
        "c.json: \"vision_config.patch_size\" 14 does not divide image_size 100");
  // text_config as transformers writes it: LlamaConfig's defaults left out.
  const auto llama_default = ov::parse_llava_vision_config(R"({"vision_config": {}, "text_config": {}, "image_token_index": 1})", "c.json");
  REQUIRE(llama_default.has_value());
  CHECK(llama_default->text_hidden_size == 4096);
  CHECK(message(R"({"vision_config": {}, "image_token_index": 1})") ==
        "c.json: \"text_config\" is missing (the language model's config; the projector's output width)");
  CHECK(message(R"({"vision_config": {}, "text_config": {"hidden_size": 8}})") ==
        "c.json: \"image_token_index\" is missing (the <image> placeholder's id)");
}

TEST_CASE("constants are folded at load: Shape chains and constant subgraphs leave no node") {
  auto graph = ov::load_graph_file(kFixtures / "dynamic_shape.onnx", {});
  REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
  CHECK(graph->folded_nodes > 0);
  for (const auto& node : graph->proto().node()) {
    CAPTURE(node.op_type());
    CHECK(node.op_type() != "Shape");
    CHECK(node.op_type() != "Constant");
    CHECK(node.op_type() != "ConstantOfShape");
  }
  // Every initializer left is read by a node or is an output.
  std::set<std::string> read;
  for (const auto& node : graph->proto().node())
    for (const auto& input : node.input()) read.insert(input);
  for (const auto& output : graph->outputs) read.insert(output.name);
  for (const auto& [name, tensor] : graph->initializers) CHECK_MESSAGE(read.count(name), name);
  // Every computed value has its static shape.
  for (const auto& node : graph->proto().node()) CHECK(graph->computed.count(node.output(0)));
}

TEST_CASE("sizes onnx's data propagation leaves unknown are found by folding and inferring again") {
  // torch.onnx's class-token expand with a dynamic batch: Shape -> Gather -> Unsqueeze -> Concat -> Equal ->
  // Where -> Expand, which onnx 1.12's data propagation does not follow through Equal and Where.
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.add_opset_import()->set_version(17);
  auto* g = model.mutable_graph();
  g->set_name("g");
  add_batch_input(*g, "x", 4);
  g->add_output()->set_name("y");
  const auto ints = [&](const std::string& name, std::vector<std::int64_t> values, bool scalar = false) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    if (!scalar) t->add_dims(std::int64_t(values.size()));
    for (std::int64_t v : values) t->add_int64_data(v);
  };
  auto* cls = g->add_initializer();
  cls->set_name("cls");
  cls->set_data_type(onnx::TensorProto::FLOAT);
  for (std::int64_t d : {1, 1, 4}) cls->add_dims(d);
  for (float v : {1.0f, 2.0f, 3.0f, 4.0f}) cls->add_float_data(v);
  ints("zero", {0}, true);
  ints("axes0", {0});
  ints("axes1", {1});
  ints("tail", {1, 4});
  ints("minus_one", {-1});
  ints("rank", {3});
  const auto node = [&](const std::string& op, std::vector<std::string> in, const std::string& out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(out);
    for (const auto& i : in) n->add_input(i);
    n->add_output(out);
    return n;
  };
  node("Shape", {"x"}, "shape");
  node("Gather", {"shape", "zero"}, "batch");
  node("Unsqueeze", {"batch", "axes0"}, "batch1");
  auto* concat = node("Concat", {"batch1", "tail"}, "target");
  auto* axis = concat->add_attribute();
  axis->set_name("axis");
  axis->set_type(onnx::AttributeProto::INT);
  axis->set_i(0);
  node("Equal", {"target", "minus_one"}, "is_free");
  node("ConstantOfShape", {"rank"}, "ones_f");
  node("Cast", {"ones_f"}, "ones")->add_attribute()->CopyFrom([] {
    onnx::AttributeProto to;
    to.set_name("to");
    to.set_type(onnx::AttributeProto::INT);
    to.set_i(onnx::TensorProto::INT64);
    return to;
  }());
  node("Where", {"is_free", "ones", "target"}, "expand_shape");
  node("Expand", {"cls", "expand_shape"}, "cls_rows");
  node("Unsqueeze", {"x", "axes1"}, "x3");
  node("Add", {"cls_rows", "x3"}, "y");

  ov::GraphLoadOptions options;
  options.input_shapes["x"] = {3, 4};
  auto graph = load_model(model, options);
  REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
  REQUIRE(graph->outputs.size() == 1);
  CHECK(graph->outputs[0].shape == std::vector<std::int64_t>{3, 1, 4});
  for (const auto& n : graph->proto().node()) CHECK(n.op_type() != "Where");  // the shape path is folded
  std::vector<float> xs(12);
  for (std::size_t k = 0; k < xs.size(); ++k) xs[k] = float(k);
  auto out = ov::run_on_cpu(*graph, {{"x", ov::HostTensor::floats({3, 4}, xs)}});
  REQUIRE_MESSAGE(out.has_value(), out.status().message());
  for (std::size_t k = 0; k < xs.size(); ++k) CHECK((*out)[0].f[k] == xs[k] + float(k % 4 + 1));
}

#ifdef HOSTRUN_ONNX_VISION_CUDA
namespace {

// `graph` on the GPU with `inputs`; its outputs back on the host.
// `stream` null: the nodes enqueued one by one; otherwise the CUDA graph.
std::vector<std::vector<float>> run_on_gpu(ov::CudaExecutor& executor, const ov::Graph& graph,
                                           const std::map<std::string, ov::HostTensor>& inputs,
                                           cudaStream_t stream = nullptr) {
  for (std::size_t k = 0; k < graph.inputs.size(); ++k) {
    const ov::HostTensor& t = inputs.at(graph.inputs[k].name);
    REQUIRE(cudaMemcpy(executor.input(k), t.f.data(), t.f.size() * 4, cudaMemcpyHostToDevice) == cudaSuccess);
  }
  const hostrun::Status run = executor.run(stream);
  REQUIRE_MESSAGE(run.is_ok(), run.message());
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  std::vector<std::vector<float>> outputs;
  for (std::size_t k = 0; k < graph.outputs.size(); ++k) {
    std::int64_t n = 1;
    for (std::int64_t d : graph.outputs[k].shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    REQUIRE(cudaMemcpy(v.data(), executor.output(k), v.size() * 4, cudaMemcpyDeviceToHost) == cudaSuccess);
    outputs.push_back(std::move(v));
  }
  return outputs;
}

// The worst error as a multiple of the tolerance: f32 everywhere, or GEMM
// operands rounded to bf16 (relative to the output's largest value).
double worst_error(const std::vector<float>& ours, const std::vector<float>& expected, ov::Precision precision) {
  REQUIRE(ours.size() == expected.size());
  double largest = 0.0, worst = 0.0;
  for (float v : expected) largest = std::max(largest, std::fabs(double(v)));
  for (std::size_t e = 0; e < ours.size(); ++e) {
    const double err = std::fabs(double(ours[e]) - double(expected[e]));
    const double tolerance = precision == ov::Precision::f32 ? 1e-5 + 1e-4 * std::fabs(double(expected[e]))
                                                             : 1e-3 + 2e-2 * largest;
    worst = std::max(worst, std::isfinite(err) ? err / tolerance : 1e9);
  }
  return worst;
}

}  // namespace

TEST_CASE("the CUDA executor against the CPU executor on every fixture" * doctest::test_suite("cuda")) {
  const nlohmann::json cases = nlohmann::json::parse(read_bytes(kFixtures / "cases.json"));
  int ran = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"];
    CAPTURE(name);
    auto graph = ov::load_graph_file(kFixtures / c["model"].get<std::string>(), {});
    REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
    const std::map<std::string, ov::HostTensor> inputs = case_inputs(c);
    auto cpu = ov::run_on_cpu(*graph, inputs);
    REQUIRE_MESSAGE(cpu.has_value(), cpu.status().message());
    bool integer_outputs = false;
    for (const auto& t : *cpu) integer_outputs = integer_outputs || t.element == ov::Element::i64;
    for (const ov::Precision precision : {ov::Precision::f32, ov::Precision::bf16_tensor_cores}) {
      CAPTURE(int(precision));
      auto executor = ov::CudaExecutor::create(*graph, precision);
      if (integer_outputs) {  // Cast to int64 and the like: the CPU executor's alone
        REQUIRE_FALSE(executor.has_value());
        CHECK(executor.status().message().find("integer") != std::string::npos);
        continue;
      }
      REQUIRE_MESSAGE(executor.has_value(), executor.status().message());
      // vit_block's attention is the only one among the fixtures: fused with bf16 GEMMs.
      CHECK((*executor)->fused_attention() == (name == "vit_block" && precision != ov::Precision::f32 ? 1 : 0));
      // vit_block, f32: q's bias and scale, and quick_gelu's Mul, Sigmoid, Mul at least, each one kernel;
      // bf16: q's, fc1's and fc2's bias adds in their GEMMs' epilogues, fc2's residual too (out's has no
      // bias before it), quick_gelu one kernel; h, h2, the attention's context and quick_gelu's output
      // written as bf16 by their producers, since only GEMMs read them, and fc1's sum by its GEMM, since
      // only quick_gelu reads it (q's sum is read by its scale's Mul before the head split: f32).
      const bool bf16 = precision != ov::Precision::f32;
      if (name == "vit_block") {
        CHECK((*executor)->fused_elementwise() >= (bf16 ? 1 : 2));
        CHECK((*executor)->activations() == 1);  // quick_gelu, in either precision
        CHECK((*executor)->fused_bias() == (bf16 ? 3 : 0));
        CHECK((*executor)->fused_residual() == (bf16 ? 1 : 0));
        CHECK((*executor)->bf16_outputs() == (bf16 ? 5 : 0));
      } else {
        CHECK((*executor)->fused_bias() == 0);
        CHECK((*executor)->fused_residual() == 0);
      }
      const auto gpu = run_on_gpu(**executor, *graph, inputs);
      for (std::size_t k = 0; k < gpu.size(); ++k) {
        const std::string output = c["outputs"][k];
        CAPTURE(output);
        const double worst = worst_error(gpu[k], (*cpu)[k].f, precision);
        CHECK_MESSAGE(worst <= 1.0, name << "." << output << ": error " << worst << "x the tolerance");
      }
      ++ran;
    }
  }
  CHECK(ran == 2 * 9);  // all but dynamic_shape, whose outputs include integers
}

TEST_CASE("LLaVA's vision graph on CUDA matches the model written out plainly" * doctest::test_suite("cuda")) {
  auto config = ov::parse_llava_vision_config(kToyLlava, "config.json");
  REQUIRE(config.has_value());
  const ov::LlavaTensorNames names{"vision_tower.vision_model.", "multi_modal_projector."};
  const Weights weights = toy_weights(*config, names);
  const onnx::ModelProto model = ov::llava_vision_graph(*config, names, [&](const std::string& name) {
    const auto& [shape, values] = weights.tensors.at(name);
    onnx::TensorProto t;
    t.set_data_type(onnx::TensorProto::FLOAT);
    for (std::int64_t dim : shape) t.add_dims(dim);
    t.set_raw_data(values.data(), values.size() * sizeof(float));
    return t;
  }, /*batch=*/2);
  auto graph = load_model(model);
  REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> pixels(2 * 3 * 4 * 4);
  for (float& p : pixels) p = normal(rng);
  const std::map<std::string, ov::HostTensor> inputs = {{"pixel_values", ov::HostTensor::floats({2, 3, 4, 4}, pixels)}};
  std::vector<float> expected;
  for (int b = 0; b < 2; ++b) {
    const std::vector<float> image(pixels.begin() + b * 48, pixels.begin() + (b + 1) * 48);
    for (double v : reference_features(*config, names, weights, image)) expected.push_back(float(v));
  }
  for (const ov::Precision precision : {ov::Precision::f32, ov::Precision::bf16_tensor_cores}) {
    CAPTURE(int(precision));
    auto executor = ov::CudaExecutor::create(*graph, precision);
    REQUIRE_MESSAGE(executor.has_value(), executor.status().message());
    CHECK((*executor)->weight_bytes() > 0);
    // bf16: every layer's attention is one fused step; f32 runs the nodes as the CPU does.
    CHECK((*executor)->fused_attention() == (precision == ov::Precision::f32 ? 0 : config->layers_run()));
    CHECK((*executor)->fused_elementwise() >= config->layers_run());  // quick_gelu in every layer
    // ... and its activation run as one: the encoder's quick_gelu in every layer, the projector's GELU.
    CHECK((*executor)->activations() == config->layers_run() + 1);
    // bf16: every Gemm's bias in its epilogue (q, k, v, out, fc1, fc2 a layer, the projector's two).
    CHECK((*executor)->fused_bias() == (precision == ov::Precision::f32 ? 0 : 6 * config->layers_run() + 2));
    // bf16: both residual adds of every layer as the out and fc2 Gemms' C; the two LayerNorms, the
    // attention's context and the MLP's activation of every layer, and the projector's GELU, written as bf16;
    // so are the sums of q, k, v and fc1 of every layer and the projector's first Linear (only the
    // attention and the activations read them).
    CHECK((*executor)->fused_residual() == (precision == ov::Precision::f32 ? 0 : 2 * config->layers_run()));
    CHECK((*executor)->bf16_outputs() == (precision == ov::Precision::f32 ? 0 : 8 * config->layers_run() + 2));
    const auto gpu = run_on_gpu(**executor, *graph, inputs);
    CHECK(worst_error(gpu[0], expected, precision) <= 1.0);
    // On a stream: captured as a CUDA graph on the first run, replayed on the second, with new pixels.
    cudaStream_t stream = nullptr;
    REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
    CHECK(run_on_gpu(**executor, *graph, inputs, stream)[0] == gpu[0]);
    std::vector<float> other(pixels.size());
    for (float& p : other) p = normal(rng);
    const std::map<std::string, ov::HostTensor> other_inputs = {{"pixel_values", ov::HostTensor::floats({2, 3, 4, 4}, other)}};
    const auto replayed = run_on_gpu(**executor, *graph, other_inputs, stream);
    CHECK(replayed[0] == run_on_gpu(**executor, *graph, other_inputs)[0]);
    CHECK(replayed[0] != gpu[0]);
    cudaStreamDestroy(stream);
  }
}

TEST_CASE("the CUDA executor refuses integers computed at run time, naming the node" * doctest::test_suite("cuda")) {
  onnx::ModelProto model = one_node("Cast");
  auto* to = model.mutable_graph()->mutable_node(0)->add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(onnx::TensorProto::INT64);
  ov::GraphLoadOptions options;
  options.input_shapes["x"] = {2, 3};
  auto graph = load_model(model, options);
  REQUIRE_MESSAGE(graph.has_value(), graph.status().message());
  auto executor = ov::CudaExecutor::create(*graph, ov::Precision::f32);
  REQUIRE_FALSE(executor.has_value());
  CHECK(executor.status().message().find("node 0 'the_node' (Cast, opset 17)") != std::string::npos);
  CHECK(executor.status().message().find("integer") != std::string::npos);
}
#endif
