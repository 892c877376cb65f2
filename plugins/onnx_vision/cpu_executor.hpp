// Runs a loaded ONNX graph (graph.hpp) on the CPU, node by node in the
// graph's order, in f32 and int64: the executor the CUDA one is checked
// against, and what CI runs. Float inputs of other widths were converted at
// load; f16 graphs therefore run in f32 here.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "onnx_vision/graph.hpp"

namespace hostrun::onnx_vision {

// `inputs` by graph input name, each of the shape and element the graph
// fixed at load; returns the graph's outputs in order. invalid_argument
// naming the input, or the node whose inputs an operator cannot take.
Result<std::vector<HostTensor>> run_on_cpu(const Graph& graph, const std::map<std::string, HostTensor>& inputs);

// One node on the CPU (constant folding): `inputs` in the node's order,
// nullptr where an optional input is omitted; `index` names it in errors.
Result<HostTensor> run_node_on_cpu(const onnx::NodeProto& node, int index, std::vector<const HostTensor*> inputs,
                                   const std::filesystem::path& directory);

}  // namespace hostrun::onnx_vision
