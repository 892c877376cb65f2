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
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "onnx_vision/cpu_executor.hpp"
#include "onnx_vision/graph.hpp"

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
  auto* x = g->add_input();
  x->set_name("x");
  auto* type = x->mutable_type()->mutable_tensor_type();
  type->set_elem_type(onnx::TensorProto::FLOAT);
  type->mutable_shape()->add_dim()->set_dim_param("batch");
  type->mutable_shape()->add_dim()->set_dim_value(3);
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
    std::map<std::string, ov::HostTensor> inputs;
    for (const auto& input : c["inputs"])
      inputs[input["name"]] = read_tensor(kFixtures / input["file"].get<std::string>(), input["dtype"],
                                          input["shape"].get<std::vector<std::int64_t>>());
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
