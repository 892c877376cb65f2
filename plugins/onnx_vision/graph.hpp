// ONNX graphs as the vision encoder runs them: parsed with libonnx's
// protobuf classes, initializers (in the file or beside it) converted once
// to what the executors compute in, input shapes fixed and every value's
// shape inferred (onnx's own shape inference, with data propagation), and
// every node checked against the operators an executor has, so that a
// graph that cannot run is refused at load naming the node.
//
// The CPU executor (cpu_executor.hpp) runs such a graph in f32 / int64 as
// the reference the CUDA one is checked against.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <onnx/onnx_pb.h>

#include "hostrun/status.hpp"

namespace hostrun::onnx_vision {

// A tensor in host memory, in one of the two element types the executors
// compute in: floating point (f32, f16 and bf16 and f64 converted) or
// integer (int64; int32, int8, uint8 and bool widened).
enum class Element { f32, i64 };
struct HostTensor {
  Element element = Element::f32;
  std::vector<std::int64_t> shape;
  std::vector<float> f;          // element == f32
  std::vector<std::int64_t> i;   // element == i64

  std::int64_t numel() const;
  static HostTensor floats(std::vector<std::int64_t> shape, std::vector<float> values);
  static HostTensor ints(std::vector<std::int64_t> shape, std::vector<std::int64_t> values);
};

// Opsets of the default domain a graph may import.
inline constexpr int kMinOpset = 14;
inline constexpr int kMaxOpset = 17;

struct GraphLoadOptions {
  // Concrete sizes for graph inputs whose dims are symbolic or -1 (e.g.
  // {"pixel_values", {1, 3, 336, 336}}); inputs not named keep their shapes,
  // which must then be fully known.
  std::map<std::string, std::vector<std::int64_t>> input_shapes;
  // Where external-data files are looked up (the .onnx file's folder); data
  // outside it is refused.
  std::filesystem::path directory;
  std::int64_t max_external_bytes = std::int64_t(16) << 30;
};

struct Graph {
  onnx::ModelProto model;  // after shape inference; initializers moved out
  int opset = 0;
  std::map<std::string, HostTensor> initializers;
  struct Value {
    std::string name;
    Element element = Element::f32;
    std::vector<std::int64_t> shape;  // static after load
  };
  std::vector<Value> inputs, outputs;  // graph inputs that are not initializers, and outputs
  // Every value a node computes, with its static shape (shape inference's
  // value_info and the outputs): what Shape folds from, and what a device
  // executor would plan memory from.
  std::map<std::string, Value> computed;
  int folded_nodes = 0;                // nodes evaluated at load (constants folded)
  std::filesystem::path directory;     // where external data lives (GraphLoadOptions::directory)

  const onnx::GraphProto& proto() const { return model.graph(); }
};

// Constant folding, done by load_graph: every node whose inputs are all
// initializers (or already folded), and every Shape node (the shapes are
// static), is evaluated once with the CPU executor and becomes an
// initializer; initializers no node reads any more are dropped. What is left
// computes from the graph's inputs: for a ViT export, the float path only.
// (load_graph also folds between rounds of shape inference, keeping
// initializers: `drop_unread` false.)
void fold_constants(Graph& graph, bool drop_unread = true);

// The operators the executors run (the ViT family's exports: CLIP, LLaVA's projector).
const std::vector<std::string>& supported_operators();

Result<Graph> load_graph(std::span<const std::uint8_t> onnx_bytes, const GraphLoadOptions& options);
// A model already in memory (llava_graph.hpp's), checked and loaded the same way.
Result<Graph> load_graph(onnx::ModelProto model, const GraphLoadOptions& options);
Result<Graph> load_graph_file(const std::filesystem::path& onnx_file, GraphLoadOptions options);

// A TensorProto (Constant attributes, initializers) as a HostTensor;
// external data is read from `directory`.
Result<HostTensor> tensor_from_proto(const onnx::TensorProto& proto, const std::filesystem::path& directory,
                                     std::int64_t max_external_bytes);

}  // namespace hostrun::onnx_vision
