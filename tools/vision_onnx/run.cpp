// `hostrun-onnx-run GRAPH.onnx --input NAME=FILE ... --out DIR`: one ONNX
// graph through onnx_vision's executors with raw f32 inputs, every output
// written as raw f32 (DIR/output-K.bin) and a JSON summary on stdout (names,
// shapes, files; on CUDA the fused attention steps and, with --repeat, the
// time of each run). What the GPU machine's parity scripts run against
// onnxruntime and torch (a torch.onnx export of HF's CLIP vision model, the
// graph hostrun-vision-onnx writes); not part of serving.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "onnx_vision/cpu_executor.hpp"
#include "onnx_vision/graph.hpp"
#ifdef HOSTRUN_ONNX_VISION_CUDA
#include <cuda_runtime.h>

#include "onnx_vision/cuda_executor.hpp"
#endif

namespace ov = hostrun::onnx_vision;
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& message) {
  fmt::print(stderr, "hostrun-onnx-run: {}\n", message);
  std::exit(1);
}

std::vector<std::int64_t> parse_shape(const std::string& text) {
  std::vector<std::int64_t> shape;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    try {
      shape.push_back(std::stoll(text.substr(at, comma - at)));
    } catch (const std::exception&) {
      fail(fmt::format("--shape: '{}' is not a list of integers", text));
    }
    at = comma + 1;
  }
  return shape;
}

std::vector<float> read_floats(const std::string& path, std::int64_t count) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail(fmt::format("{}: cannot open", path));
  if (std::int64_t(in.tellg()) != count * 4)
    fail(fmt::format("{}: {} bytes, the input takes {} f32 values ({} bytes)", path, std::int64_t(in.tellg()), count,
                     count * 4));
  std::vector<float> values(static_cast<std::size_t>(count));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(values.data()), count * 4);
  return values;
}

std::int64_t count(const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

void write_floats(const fs::path& path, const float* values, std::int64_t n) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out.write(reinterpret_cast<const char*>(values), n * 4)) fail(fmt::format("{}: cannot write", path.string()));
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("An ONNX graph through onnx_vision's CPU or CUDA executor, raw f32 in and out", "hostrun-onnx-run");
  std::string graph_path, out_dir, device = "cpu", precision = "bf16";
  std::vector<std::string> input_specs, shape_specs;
  int repeat = 0;
  app.add_option("GRAPH", graph_path, "The .onnx file")->required();
  app.add_option("--input", input_specs, "NAME=FILE: raw little-endian f32 values of a graph input")->required();
  app.add_option("--shape", shape_specs, "NAME=D0,D1,...: sizes of an input whose dims are symbolic");
  app.add_option("--out", out_dir, "Folder for output-K.bin")->required();
  app.add_option("--device", device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  app.add_option("--precision", precision, "CUDA GEMMs: bf16 (tensor cores, fused attention) or f32")
      ->check(CLI::IsMember({"bf16", "f32"}))
      ->capture_default_str();
  app.add_option("--repeat", repeat, "CUDA: timed runs after the first (which captures the graph)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  const auto split = [](const std::string& spec, const char* flag) {
    const std::size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0) fail(fmt::format("{} {}: expected NAME=VALUE", flag, spec));
    return std::pair{spec.substr(0, eq), spec.substr(eq + 1)};
  };
  ov::GraphLoadOptions options;
  options.directory = fs::path(graph_path).parent_path();
  for (const auto& spec : shape_specs) {
    auto [name, dims] = split(spec, "--shape");
    options.input_shapes[name] = parse_shape(dims);
  }
  auto graph = ov::load_graph_file(graph_path, options);
  if (!graph) fail(graph.status().message());
  std::map<std::string, std::string> files;
  for (const auto& spec : input_specs) files.insert(split(spec, "--input"));
  std::map<std::string, ov::HostTensor> inputs;
  for (const auto& input : graph->inputs) {
    const auto file = files.find(input.name);
    if (file == files.end()) fail(fmt::format("no --input for the graph's input '{}'", input.name));
    if (input.element != ov::Element::f32) fail(fmt::format("input '{}' is not float", input.name));
    inputs[input.name] = ov::HostTensor::floats(input.shape, read_floats(file->second, count(input.shape)));
  }
  fs::create_directories(out_dir);
  nlohmann::json summary;
  summary["device"] = device;
  summary["outputs"] = nlohmann::json::array();
  const auto record = [&](std::size_t k, const float* values) {
    const auto& output = graph->outputs[k];
    const fs::path file = fs::path(out_dir) / fmt::format("output-{}.bin", k);
    write_floats(file, values, count(output.shape));
    summary["outputs"].push_back({{"name", output.name}, {"shape", output.shape}, {"file", file.string()}});
  };

  if (device == "cpu") {
    const auto t0 = std::chrono::steady_clock::now();
    auto outputs = ov::run_on_cpu(*graph, inputs);
    summary["cpu_run_ms"] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!outputs) fail(outputs.status().message());
    for (std::size_t k = 0; k < outputs->size(); ++k) {
      if ((*outputs)[k].element != ov::Element::f32) fail(fmt::format("output {} is not float", k));
      record(k, (*outputs)[k].f.data());
    }
  } else {
#ifdef HOSTRUN_ONNX_VISION_CUDA
    summary["precision"] = precision;
    auto executor = ov::CudaExecutor::create(*graph, precision == "f32" ? ov::Precision::f32 : ov::Precision::bf16_tensor_cores);
    if (!executor) fail(executor.status().message());
    ov::CudaExecutor& e = **executor;
    summary["fused_attention"] = e.fused_attention();
    summary["fused_bias"] = e.fused_bias();
    summary["fused_residual"] = e.fused_residual();
    summary["bf16_outputs"] = e.bf16_outputs();
    summary["activations"] = e.activations();
    summary["arena_bytes"] = e.arena_bytes();
    summary["weight_bytes"] = e.weight_bytes();
    cudaStream_t stream = nullptr;
    if (cudaStreamCreate(&stream) != cudaSuccess) fail("cannot create a CUDA stream");
    for (std::size_t k = 0; k < graph->inputs.size(); ++k)
      if (auto s = e.set_input(k, inputs.at(graph->inputs[k].name).f, stream); !s) fail(s.message());
    if (auto s = e.run(stream); !s) fail(s.message());
    if (cudaStreamSynchronize(stream) != cudaSuccess) fail("the first run failed on the device");
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    std::vector<double> run_ms;
    for (int r = 0; r < repeat; ++r) {
      cudaEventRecord(start, stream);
      if (auto s = e.run(stream); !s) fail(s.message());
      cudaEventRecord(stop, stream);
      cudaEventSynchronize(stop);
      float ms = 0;
      cudaEventElapsedTime(&ms, start, stop);
      run_ms.push_back(ms);
    }
    summary["run_ms"] = run_ms;
    for (std::size_t k = 0; k < graph->outputs.size(); ++k) {
      std::vector<float> host(std::size_t(count(graph->outputs[k].shape)));
      if (cudaMemcpy(host.data(), e.output(k), host.size() * 4, cudaMemcpyDeviceToHost) != cudaSuccess)
        fail("cannot read an output back");
      record(k, host.data());
    }
    cudaStreamDestroy(stream);
#else
    fail("built without CUDA");
#endif
  }
  fmt::print("{}\n", summary.dump(1));
  return 0;
}
