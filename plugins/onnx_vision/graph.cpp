#include "onnx_vision/graph.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include "onnx_vision/cpu_executor.hpp"
#include "ref/dtype.hpp"

namespace hostrun::onnx_vision {

std::int64_t HostTensor::numel() const {
  std::int64_t n = 1;
  for (std::int64_t d : shape) n *= d;
  return n;
}

HostTensor HostTensor::floats(std::vector<std::int64_t> shape, std::vector<float> values) {
  HostTensor t;
  t.element = Element::f32;
  t.shape = std::move(shape);
  t.f = std::move(values);
  return t;
}

HostTensor HostTensor::ints(std::vector<std::int64_t> shape, std::vector<std::int64_t> values) {
  HostTensor t;
  t.element = Element::i64;
  t.shape = std::move(shape);
  t.i = std::move(values);
  return t;
}

const std::vector<std::string>& supported_operators() {
  static const std::vector<std::string> ops = {
      "Add",      "Cast",    "Concat",    "Constant",  "ConstantOfShape", "Conv",      "Div",      "Equal",
      "Erf",      "Expand",  "Flatten",   "Gather",    "Gemm",            "Identity",  "LayerNormalization",
      "MatMul",   "Mul",     "Neg",       "Pow",       "ReduceMean",      "Relu",      "Reshape",  "Shape",
      "Sigmoid",  "Slice",   "Softmax",   "Sqrt",      "Squeeze",         "Sub",       "Tanh",     "Transpose",
      "Unsqueeze", "Where"};
  return ops;
}

namespace {

[[noreturn]] void refuse(std::string message) { throw Error(ErrorCode::invalid_argument, std::move(message)); }

Element element_of(int data_type, std::string_view what) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT:
    case onnx::TensorProto::FLOAT16:
    case onnx::TensorProto::BFLOAT16:
    case onnx::TensorProto::DOUBLE: return Element::f32;
    case onnx::TensorProto::INT64:
    case onnx::TensorProto::INT32:
    case onnx::TensorProto::INT8:
    case onnx::TensorProto::UINT8:
    case onnx::TensorProto::BOOL: return Element::i64;
    default:
      refuse(fmt::format("{}: element type {} ({}) is not supported (float, float16, bfloat16, double, int64, "
                         "int32, int8, uint8, bool are)",
                         what, onnx::TensorProto::DataType_Name(onnx::TensorProto::DataType(data_type)), data_type));
  }
}

std::size_t element_bytes(int data_type) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT:
    case onnx::TensorProto::INT32: return 4;
    case onnx::TensorProto::FLOAT16:
    case onnx::TensorProto::BFLOAT16: return 2;
    case onnx::TensorProto::DOUBLE:
    case onnx::TensorProto::INT64: return 8;
    default: return 1;  // INT8, UINT8, BOOL
  }
}

// The external bytes of `proto` (location / offset / length), read from a
// regular file inside `directory`.
std::string read_external(const onnx::TensorProto& proto, const std::filesystem::path& directory,
                          std::int64_t max_bytes, std::size_t expected) {
  std::string location;
  std::int64_t offset = 0, length = -1;
  for (const auto& entry : proto.external_data()) {
    try {
      if (entry.key() == "location") location = entry.value();
      else if (entry.key() == "offset") offset = std::stoll(entry.value());
      else if (entry.key() == "length") length = std::stoll(entry.value());
    } catch (const std::exception&) {
      refuse(fmt::format("initializer '{}': external_data {} is not a number: '{}'", proto.name(), entry.key(),
                         entry.value()));
    }
  }
  const std::filesystem::path relative(location);
  if (location.empty() || relative.is_absolute() ||
      std::any_of(relative.begin(), relative.end(), [](const auto& part) { return part == ".."; }))
    refuse(fmt::format("initializer '{}': external data location '{}' must be a file name inside the model's folder",
                       proto.name(), location));
  if (length < 0) length = std::int64_t(expected);
  if (offset < 0 || std::size_t(length) != expected || length > max_bytes)
    refuse(fmt::format("initializer '{}': external data of {} bytes at offset {} (the tensor needs {})", proto.name(),
                       length, offset, expected));
  const std::filesystem::path file = directory / relative;
  std::error_code error;
  if (!std::filesystem::is_regular_file(file, error))
    refuse(fmt::format("initializer '{}': external data file {} does not exist or is not a file", proto.name(),
                       file.string()));
  const std::uintmax_t size = std::filesystem::file_size(file, error);
  if (error || std::uintmax_t(offset) + std::uintmax_t(length) > size)
    refuse(fmt::format("initializer '{}': {} holds {} bytes, the tensor's data would end at byte {}", proto.name(),
                       file.string(), size, offset + length));
  std::ifstream in(file, std::ios::binary);
  std::string bytes(std::size_t(length), '\0');
  in.seekg(offset);
  in.read(bytes.data(), length);
  if (!in) refuse(fmt::format("initializer '{}': reading {} failed", proto.name(), file.string()));
  return bytes;
}

HostTensor convert(const onnx::TensorProto& proto, const std::filesystem::path& directory, std::int64_t max_bytes) {
  const std::string what = proto.name().empty() ? std::string("a constant tensor") : "'" + proto.name() + "'";
  const Element element = element_of(proto.data_type(), what);
  HostTensor t;
  t.element = element;
  std::int64_t count = 1;
  for (std::int64_t d : proto.dims()) {
    if (d < 0 || (d > 0 && count > (std::int64_t(1) << 40) / d)) refuse(fmt::format("{}: bad dims", what));
    t.shape.push_back(d);
    count *= d;
  }
  const int type = proto.data_type();
  const std::size_t bytes = std::size_t(count) * element_bytes(type);
  std::string external;
  const std::string* raw = nullptr;
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    external = read_external(proto, directory, max_bytes, bytes);
    raw = &external;
  } else if (proto.has_raw_data()) {
    raw = &proto.raw_data();
    if (raw->size() != bytes)
      refuse(fmt::format("{}: raw_data holds {} bytes, {} elements need {}", what, raw->size(), count, bytes));
  }
  if (element == Element::f32) t.f.resize(std::size_t(count));
  else t.i.resize(std::size_t(count));
  const auto typed_size_is = [&](int n) {
    if (n != count) refuse(fmt::format("{}: holds {} values, its dims say {}", what, n, count));
  };
  for (std::int64_t k = 0; k < count; ++k) {
    const std::size_t at = std::size_t(k);
    switch (type) {
      case onnx::TensorProto::FLOAT: {
        if (raw) std::memcpy(&t.f[at], raw->data() + 4 * at, 4);
        else { if (k == 0) typed_size_is(proto.float_data_size()); t.f[at] = proto.float_data(int(k)); }
        break;
      }
      case onnx::TensorProto::DOUBLE: {
        double v;
        if (raw) std::memcpy(&v, raw->data() + 8 * at, 8);
        else { if (k == 0) typed_size_is(proto.double_data_size()); v = proto.double_data(int(k)); }
        t.f[at] = float(v);
        break;
      }
      case onnx::TensorProto::FLOAT16:
      case onnx::TensorProto::BFLOAT16: {
        std::uint16_t v;
        if (raw) std::memcpy(&v, raw->data() + 2 * at, 2);
        else { if (k == 0) typed_size_is(proto.int32_data_size()); v = std::uint16_t(proto.int32_data(int(k))); }
        t.f[at] = type == onnx::TensorProto::FLOAT16 ? ref::f16_to_f32(v) : ref::bf16_to_f32(v);
        break;
      }
      case onnx::TensorProto::INT64: {
        if (raw) std::memcpy(&t.i[at], raw->data() + 8 * at, 8);
        else { if (k == 0) typed_size_is(proto.int64_data_size()); t.i[at] = proto.int64_data(int(k)); }
        break;
      }
      case onnx::TensorProto::INT32: {
        std::int32_t v;
        if (raw) std::memcpy(&v, raw->data() + 4 * at, 4);
        else { if (k == 0) typed_size_is(proto.int32_data_size()); v = proto.int32_data(int(k)); }
        t.i[at] = v;
        break;
      }
      case onnx::TensorProto::INT8: {
        if (raw) t.i[at] = std::int8_t(raw->data()[at]);
        else { if (k == 0) typed_size_is(proto.int32_data_size()); t.i[at] = std::int8_t(proto.int32_data(int(k))); }
        break;
      }
      default: {  // UINT8, BOOL
        if (raw) t.i[at] = std::uint8_t(raw->data()[at]);
        else { if (k == 0) typed_size_is(proto.int32_data_size()); t.i[at] = std::uint8_t(proto.int32_data(int(k))); }
        if (type == onnx::TensorProto::BOOL) t.i[at] = t.i[at] != 0;
        break;
      }
    }
  }
  return t;
}

std::vector<std::int64_t> static_shape(const onnx::ValueInfoProto& value, std::string_view role) {
  if (!value.type().has_tensor_type() || !value.type().tensor_type().has_shape())
    refuse(fmt::format("{} '{}' has no known shape after shape inference", role, value.name()));
  std::vector<std::int64_t> shape;
  for (const auto& dim : value.type().tensor_type().shape().dim()) {
    if (!dim.has_dim_value() || dim.dim_value() < 0)
      refuse(fmt::format("{} '{}': dimension {} is not known after shape inference{}", role, value.name(),
                         shape.size(), dim.has_dim_param() ? " ('" + dim.dim_param() + "')" : ""));
    shape.push_back(dim.dim_value());
  }
  return shape;
}

bool static_dims(const onnx::ValueInfoProto& value) {
  if (!value.type().has_tensor_type() || !value.type().tensor_type().has_shape()) return false;
  for (const auto& dim : value.type().tensor_type().shape().dim())
    if (!dim.has_dim_value() || dim.dim_value() < 0) return false;
  return true;
}

// A folded value back as an initializer, in the element type inference gave
// it (a folded Equal stays bool for the Where that reads it).
onnx::TensorProto to_proto(const std::string& name, const HostTensor& t, int data_type) {
  onnx::TensorProto proto;
  proto.set_name(name);
  for (std::int64_t d : t.shape) proto.add_dims(d);
  if (t.element == Element::f32) {
    proto.set_data_type(onnx::TensorProto::FLOAT);
    proto.set_raw_data(t.f.data(), t.f.size() * sizeof(float));
    return proto;
  }
  std::string raw;
  const auto put = [&](auto value) { raw.append(reinterpret_cast<const char*>(&value), sizeof value); };
  switch (data_type) {
    case onnx::TensorProto::INT32: for (std::int64_t v : t.i) put(std::int32_t(v)); break;
    case onnx::TensorProto::INT8: for (std::int64_t v : t.i) put(std::int8_t(v)); break;
    case onnx::TensorProto::UINT8:
    case onnx::TensorProto::BOOL: for (std::int64_t v : t.i) put(std::uint8_t(v)); break;
    default: data_type = onnx::TensorProto::INT64; for (std::int64_t v : t.i) put(v); break;
  }
  proto.set_data_type(data_type);
  proto.set_raw_data(raw);
  return proto;
}

void infer_shapes(onnx::ModelProto& model) {
  try {
    onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict=*/1,
                                                                   /*data_propagation=*/true));
  } catch (const std::exception& e) {
    refuse(fmt::format("shape inference failed: {}", e.what()));
  }
}

// A tensor value's element type and static shape into graph.computed
// (static_shape refuses sizes left unknown).
void record_computed(const onnx::ValueInfoProto& value, Graph& graph) {
  if (!value.type().has_tensor_type()) return;
  const int type = value.type().tensor_type().elem_type();
  if (type == onnx::TensorProto::UNDEFINED || type == onnx::TensorProto::STRING) return;
  graph.computed[value.name()] = {value.name(), element_of(type, "value '" + value.name() + "'"),
                                  static_shape(value, "value")};
}

// The shapes inference knows completely, by value name.
void known_shapes(const onnx::GraphProto& g, Graph& graph) {
  graph.computed.clear();
  for (const auto* values : {&g.input(), &g.value_info(), &g.output()})
    for (const auto& value : *values)
      if (static_dims(value)) record_computed(value, graph);
}

Graph load(onnx::ModelProto parsed, const GraphLoadOptions& options) {
  Graph graph;
  graph.directory = options.directory;
  graph.model = std::move(parsed);
  onnx::ModelProto& model = graph.model;
  for (const auto& import : model.opset_import()) {
    if (import.domain().empty() || import.domain() == "ai.onnx") {
      graph.opset = int(import.version());
    } else {
      refuse(fmt::format("opset domain '{}' (version {}) is not supported: only the default ONNX domain is",
                         import.domain(), import.version()));
    }
  }
  if (graph.opset < kMinOpset || graph.opset > kMaxOpset)
    refuse(fmt::format("the model imports ONNX opset {}; opsets {} to {} are supported", graph.opset, kMinOpset,
                       kMaxOpset));
  onnx::GraphProto& g = *model.mutable_graph();
  std::set<std::string> initializer_names;
  for (const auto& init : g.initializer()) initializer_names.insert(init.name());

  // Concrete input shapes before inference.
  std::set<std::string> named;
  for (auto& input : *g.mutable_input()) {
    if (initializer_names.count(input.name())) continue;
    auto* tensor = input.mutable_type()->mutable_tensor_type();
    const auto given = options.input_shapes.find(input.name());
    if (given != options.input_shapes.end()) {
      named.insert(input.name());
      auto* shape = tensor->mutable_shape();
      if (shape->dim_size() != 0 && shape->dim_size() != int(given->second.size()))
        refuse(fmt::format("input '{}' has {} dimensions in the graph, {} were given", input.name(),
                           shape->dim_size(), given->second.size()));
      shape->clear_dim();
      for (std::int64_t d : given->second) {
        if (d <= 0) refuse(fmt::format("input '{}': sizes must be positive, got {}", input.name(), d));
        shape->add_dim()->set_dim_value(d);
      }
    }
  }
  for (const auto& [name, shape] : options.input_shapes)
    if (!named.count(name)) refuse(fmt::format("input_shapes names '{}', which is not an input of the graph", name));

  // Every node: a supported operator, inputs defined before use.
  const std::vector<std::string>& ops = supported_operators();
  std::set<std::string> defined = initializer_names;
  for (const auto& input : g.input()) defined.insert(input.name());
  for (int n = 0; n < g.node_size(); ++n) {
    const onnx::NodeProto& node = g.node(n);
    const std::string label = fmt::format("node {} '{}' ({}, opset {})", n, node.name(), node.op_type(), graph.opset);
    if (!node.domain().empty() && node.domain() != "ai.onnx")
      refuse(fmt::format("{}: domain '{}' is not supported", label, node.domain()));
    if (std::find(ops.begin(), ops.end(), node.op_type()) == ops.end())
      refuse(fmt::format("{}: operator {} is not supported by hostrun's ONNX executors (supported: {})", label,
                         node.op_type(), fmt::join(ops, ", ")));
    for (const auto& attribute : node.attribute())
      if (node.op_type() == "Conv" && attribute.name() == "auto_pad" && attribute.s() != "NOTSET")
        refuse(fmt::format("{}: attribute auto_pad = {} is not supported (export with explicit pads)", label,
                           attribute.s()));
    for (const auto& input : node.input())
      if (!input.empty() && !defined.count(input))
        refuse(fmt::format("{}: input '{}' is used before any node produces it (nodes must be in topological order)",
                           label, input));
    for (const auto& output : node.output()) defined.insert(output);
  }

  infer_shapes(model);
  for (const auto& init : g.initializer())
    graph.initializers.emplace(init.name(), convert(init, options.directory, options.max_external_bytes));
  // Shape computations onnx's data propagation does not follow (torch.onnx's
  // Expand of the class token: Shape -> Gather -> Concat -> Equal -> Where)
  // leave sizes unknown: fold what the known shapes and constants decide,
  // hand the folded values back as initializers, and infer again.
  for (int round = 0; round < 8; ++round) {
    const auto unknown = [](const auto& values) {
      return std::any_of(values.begin(), values.end(), [](const auto& v) { return !static_dims(v); });
    };
    if (!unknown(g.value_info()) && !unknown(g.output())) break;
    known_shapes(g, graph);
    std::map<std::string, int> types;
    for (const auto& value : g.value_info()) types[value.name()] = value.type().tensor_type().elem_type();
    const std::set<std::string> before = [&] {
      std::set<std::string> names;
      for (const auto& [name, t] : graph.initializers) names.insert(name);
      return names;
    }();
    const int folded = graph.folded_nodes;
    fold_constants(graph, /*drop_unread=*/false);
    if (graph.folded_nodes == folded) break;
    for (const auto& [name, t] : graph.initializers)
      if (!before.count(name)) *g.add_initializer() = to_proto(name, t, types.count(name) ? types[name] : 0);
    g.clear_value_info();
    infer_shapes(model);
  }

  for (const auto& input : g.input()) {
    if (initializer_names.count(input.name())) continue;
    const Element element = element_of(input.type().tensor_type().elem_type(), "input '" + input.name() + "'");
    graph.inputs.push_back({input.name(), element, static_shape(input, "input")});
  }
  for (const auto& output : g.output()) {
    const Element element = element_of(output.type().tensor_type().elem_type(), "output '" + output.name() + "'");
    graph.outputs.push_back({output.name(), element, static_shape(output, "output")});
  }
  g.clear_initializer();
  graph.computed.clear();
  for (const auto& value : g.value_info()) record_computed(value, graph);
  for (const Graph::Value& output : graph.outputs) graph.computed[output.name] = output;
  fold_constants(graph);
  return graph;
}

}  // namespace

void fold_constants(Graph& graph, bool drop_unread) {
  onnx::GraphProto& g = *graph.model.mutable_graph();
  google::protobuf::RepeatedPtrField<onnx::NodeProto> kept;
  for (int n = 0; n < g.node_size(); ++n) {
    onnx::NodeProto& node = *g.mutable_node(n);
    std::vector<const HostTensor*> inputs;
    bool constant = node.output_size() == 1;
    for (const auto& name : node.input()) {
      if (name.empty()) { inputs.push_back(nullptr); continue; }
      const auto it = graph.initializers.find(name);
      inputs.push_back(it == graph.initializers.end() ? nullptr : &it->second);
      constant = constant && it != graph.initializers.end();
    }
    HostTensor shape_of;  // a stand-in of the input's shape (and no values): all Shape reads
    if (node.op_type() == "Shape" && node.output_size() == 1 && node.input_size() == 1 && !constant) {
      const auto value = graph.computed.find(node.input(0));
      const auto input = std::find_if(graph.inputs.begin(), graph.inputs.end(),
                                      [&](const Graph::Value& v) { return v.name == node.input(0); });
      const std::vector<std::int64_t>* shape = value != graph.computed.end() ? &value->second.shape
                                               : input != graph.inputs.end() ? &input->shape
                                                                             : nullptr;
      if (shape != nullptr) {
        shape_of.shape = *shape;
        inputs = {&shape_of};
        constant = true;
      }
    }
    if (!constant) {
      *kept.Add() = std::move(node);
      continue;
    }
    Result<HostTensor> value = run_node_on_cpu(node, n, inputs, graph.directory);
    if (!value) refuse(fmt::format("folding constants: {}", value.status().message()));
    graph.initializers[node.output(0)] = std::move(value).value();
    ++graph.folded_nodes;
  }
  g.mutable_node()->Swap(&kept);
  if (!drop_unread) return;
  std::set<std::string> read;
  for (const auto& node : g.node())
    for (const auto& name : node.input()) read.insert(name);
  for (const Graph::Value& output : graph.outputs) read.insert(output.name);
  std::erase_if(graph.initializers, [&](const auto& entry) { return !read.count(entry.first); });
}

Result<HostTensor> tensor_from_proto(const onnx::TensorProto& proto, const std::filesystem::path& directory,
                                     std::int64_t max_external_bytes) {
  return guard_result<HostTensor>([&] { return convert(proto, directory, max_external_bytes); });
}

Result<Graph> load_graph(std::span<const std::uint8_t> onnx_bytes, const GraphLoadOptions& options) {
  return guard_result<Graph>([&] {
    onnx::ModelProto model;
    if (onnx_bytes.size() > std::size_t(INT32_MAX) || !model.ParseFromArray(onnx_bytes.data(), int(onnx_bytes.size())))
      refuse(fmt::format("not an ONNX model: the {} bytes do not parse as a ModelProto (larger models keep their "
                         "weights in external data files)",
                         onnx_bytes.size()));
    return load(std::move(model), options);
  });
}

Result<Graph> load_graph(onnx::ModelProto model, const GraphLoadOptions& options) {
  return guard_result<Graph>([&] { return load(std::move(model), options); });
}

Result<Graph> load_graph_file(const std::filesystem::path& onnx_file, GraphLoadOptions options) {
  return guard_result<Graph>([&] {
    std::ifstream in(onnx_file, std::ios::binary);
    if (!in) throw Error(ErrorCode::not_found, fmt::format("cannot open {}", onnx_file.string()));
    const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (options.directory.empty()) options.directory = onnx_file.parent_path();
    Result<Graph> graph = load_graph(bytes, options);
    if (!graph) throw Error(graph.status().code(), fmt::format("{}: {}", onnx_file.string(), graph.status().message()));
    return std::move(graph).value();
  });
}

}  // namespace hostrun::onnx_vision
