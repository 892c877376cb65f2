#include "onnx_vision/llava_graph.hpp"

#include <cmath>
#include <numbers>
#include <set>
#include <vector>

#include <fmt/format.h>

#include "ref/dtype.hpp"
#include <hostrun/json_bounds.hpp>
#include <nlohmann/json.hpp>

namespace hostrun::onnx_vision {

namespace {

using nlohmann::json;

[[noreturn]] void refuse(std::string_view source, std::string_view key, std::string_view why) {
  throw Error(ErrorCode::invalid_argument, fmt::format("{}: \"{}\" {}", source, key, why));
}

int read_int(const json& object, const char* key, int fallback, std::string_view source, std::string_view prefix,
             int min, int max) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_number_integer() || it->get<std::int64_t>() < min || it->get<std::int64_t>() > max)
    refuse(source, fmt::format("{}{}", prefix, key), fmt::format("must be a whole number from {} to {}, found {}", min, max, it->dump()));
  return it->get<int>();
}

std::string read_string(const json& object, const char* key, std::string fallback, std::string_view source,
                        std::string_view prefix) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_string()) refuse(source, fmt::format("{}{}", prefix, key), fmt::format("must be a string, found {}", it->dump()));
  return it->get<std::string>();
}

bool known_activation(const std::string& act) {
  return act == "quick_gelu" || act == "gelu" || act == "gelu_pytorch_tanh" || act == "gelu_new";
}

LlavaVisionConfig parse(std::string_view config_text, std::string_view source) {
  Result<json> parsed = parse_json_bounded<json>(config_text, JsonLimits{}, source);
  if (!parsed) throw Error(parsed.status());
  const json& root = parsed.value();
  if (!root.is_object()) throw Error(ErrorCode::invalid_argument, fmt::format("{}: expected a JSON object", source));
  const auto vision = root.find("vision_config");
  if (vision == root.end() || !vision->is_object())
    refuse(source, "vision_config", "is missing: not a LLaVA folder (LlavaForConditionalGeneration)");
  LlavaVisionConfig c;
  const json& v = *vision;
  c.hidden_size = read_int(v, "hidden_size", c.hidden_size, source, "vision_config.", 1, 1 << 16);
  c.intermediate_size = read_int(v, "intermediate_size", c.intermediate_size, source, "vision_config.", 1, 1 << 18);
  c.num_hidden_layers = read_int(v, "num_hidden_layers", c.num_hidden_layers, source, "vision_config.", 1, 1024);
  c.num_attention_heads = read_int(v, "num_attention_heads", c.num_attention_heads, source, "vision_config.", 1, 1024);
  c.num_channels = read_int(v, "num_channels", c.num_channels, source, "vision_config.", 1, 4);
  c.image_size = read_int(v, "image_size", c.image_size, source, "vision_config.", 1, 8192);
  c.patch_size = read_int(v, "patch_size", c.patch_size, source, "vision_config.", 1, 8192);
  if (const auto eps = v.find("layer_norm_eps"); eps != v.end() && !eps->is_null()) {
    if (!eps->is_number() || !(eps->get<double>() > 0.0)) refuse(source, "vision_config.layer_norm_eps", "must be positive");
    c.layer_norm_eps = eps->get<float>();
  }
  c.hidden_act = read_string(v, "hidden_act", c.hidden_act, source, "vision_config.");
  if (!known_activation(c.hidden_act))
    refuse(source, "vision_config.hidden_act", fmt::format("'{}' is not supported (quick_gelu, gelu, gelu_pytorch_tanh)", c.hidden_act));
  if (c.hidden_size % c.num_attention_heads != 0)
    refuse(source, "vision_config.num_attention_heads", fmt::format("{} does not divide hidden_size {}", c.num_attention_heads, c.hidden_size));
  if (c.image_size % c.patch_size != 0)
    refuse(source, "vision_config.patch_size", fmt::format("{} does not divide image_size {}", c.patch_size, c.image_size));

  if (const auto layer = root.find("vision_feature_layer"); layer != root.end() && !layer->is_null()) {
    if (!layer->is_number_integer())
      refuse(source, "vision_feature_layer", fmt::format("must be one layer index (lists of layers are not supported), found {}", layer->dump()));
    c.vision_feature_layer = layer->get<int>();
  }
  if (c.vision_feature_layer < -(c.num_hidden_layers + 1) || c.vision_feature_layer > c.num_hidden_layers)
    refuse(source, "vision_feature_layer", fmt::format("{} is outside the {} hidden states of a {}-layer encoder",
                                                       c.vision_feature_layer, c.num_hidden_layers + 1, c.num_hidden_layers));
  const std::string strategy = read_string(root, "vision_feature_select_strategy", "default", source, "");
  if (strategy != "default" && strategy != "full")
    refuse(source, "vision_feature_select_strategy", fmt::format("'{}' is not supported (default, full)", strategy));
  c.keep_cls = strategy == "full";
  c.projector_hidden_act = read_string(root, "projector_hidden_act", c.projector_hidden_act, source, "");
  if (!known_activation(c.projector_hidden_act))
    refuse(source, "projector_hidden_act", fmt::format("'{}' is not supported (gelu, quick_gelu, gelu_pytorch_tanh)", c.projector_hidden_act));
  if (const auto bias = root.find("multimodal_projector_bias"); bias != root.end() && !bias->is_null()) {
    if (!bias->is_boolean()) refuse(source, "multimodal_projector_bias", "must be true or false");
    c.projector_bias = bias->get<bool>();
  }
  // The projector's output width. transformers writes text_config as its
  // difference from LlamaConfig's defaults, whose hidden_size is 4096.
  const auto text = root.find("text_config");
  if (text == root.end() || !text->is_object())
    refuse(source, "text_config", "is missing (the language model's config; the projector's output width)");
  c.text_hidden_size = read_int(*text, "hidden_size", 4096, source, "text_config.", 1, 1 << 17);
  for (const char* key : {"image_token_index", "image_token_id"}) {
    const auto id = root.find(key);
    if (id == root.end() || id->is_null()) continue;
    if (!id->is_number_integer() || id->get<std::int64_t>() < 0) refuse(source, key, "must be a token id");
    c.image_token_id = id->get<std::int64_t>();
  }
  if (c.image_token_id < 0) refuse(source, "image_token_index", "is missing (the <image> placeholder's id)");
  return c;
}

// ---- graph building -----------------------------------------------------------

class GraphWriter {
 public:
  GraphWriter(onnx::GraphProto& graph, const InitializerSource& initializer) : g_(graph), initializer_(initializer) {}

  std::string node(const std::string& op, std::vector<std::string> inputs, const std::string& hint,
                   const std::function<void(onnx::NodeProto&)>& attributes = {}) {
    onnx::NodeProto* n = g_.add_node();
    const std::string out = fmt::format("{}_{}", hint, g_.node_size());
    n->set_op_type(op);
    n->set_name(out);
    for (const std::string& in : inputs) n->add_input(in);
    n->add_output(out);
    if (attributes) attributes(*n);
    return out;
  }
  std::string weight(const std::string& name) {
    if (!added_.insert(name).second) return name;
    onnx::TensorProto t = initializer_(name);
    t.set_name(name);
    *g_.add_initializer() = std::move(t);
    return name;
  }
  std::string ints(const std::string& name, const std::vector<std::int64_t>& values) {
    onnx::TensorProto* t = g_.add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(std::int64_t(values.size()));
    for (std::int64_t v : values) t->add_int64_data(v);
    return name;
  }
  std::string scalar(const std::string& name, float value) {
    onnx::TensorProto* t = g_.add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_float_data(value);
    return name;
  }

 private:
  onnx::GraphProto& g_;
  const InitializerSource& initializer_;
  std::set<std::string> added_;
};

void set_int(onnx::NodeProto& n, const char* name, std::int64_t value) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(value);
}
void set_ints(onnx::NodeProto& n, const char* name, const std::vector<std::int64_t>& values) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (std::int64_t v : values) a->add_ints(v);
}
void set_float(onnx::NodeProto& n, const char* name, float value) {
  auto* a = n.add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(value);
}

// x [rows, in] times an HF Linear (weight [out, in], bias [out]).
std::string linear(GraphWriter& w, const std::string& x, const std::string& prefix, bool bias = true) {
  std::vector<std::string> inputs{x, w.weight(prefix + "weight")};
  if (bias) inputs.push_back(w.weight(prefix + "bias"));
  return w.node("Gemm", inputs, "linear", [](onnx::NodeProto& n) { set_int(n, "transB", 1); });
}

std::string layer_norm(GraphWriter& w, const std::string& x, const std::string& prefix, float eps) {
  return w.node("LayerNormalization", {x, w.weight(prefix + "weight"), w.weight(prefix + "bias")}, "ln",
                [eps](onnx::NodeProto& n) {
                  set_int(n, "axis", -1);
                  set_float(n, "epsilon", eps);
                });
}

std::string activation(GraphWriter& w, const std::string& x, const std::string& act) {
  if (act == "quick_gelu") {  // x * sigmoid(1.702 x)
    const std::string s = w.node("Sigmoid", {w.node("Mul", {x, "quick_gelu_k"}, "qg")}, "qg");
    return w.node("Mul", {x, s}, "quick_gelu");
  }
  if (act == "gelu") {  // x / 2 (1 + erf(x / sqrt 2))
    const std::string e = w.node("Erf", {w.node("Mul", {x, "inv_sqrt2"}, "gelu")}, "gelu");
    return w.node("Mul", {w.node("Mul", {x, "half"}, "gelu"), w.node("Add", {e, "one_f"}, "gelu")}, "gelu");
  }
  // gelu_pytorch_tanh / gelu_new: x / 2 (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))
  const std::string cube = w.node("Mul", {w.node("Mul", {x, x}, "tanh_gelu"), x}, "tanh_gelu");
  const std::string inner = w.node("Add", {x, w.node("Mul", {cube, "gelu_c"}, "tanh_gelu")}, "tanh_gelu");
  const std::string t = w.node("Tanh", {w.node("Mul", {inner, "sqrt_2_over_pi"}, "tanh_gelu")}, "tanh_gelu");
  return w.node("Mul", {w.node("Mul", {x, "half"}, "tanh_gelu"), w.node("Add", {t, "one_f"}, "tanh_gelu")}, "tanh_gelu");
}

}  // namespace

Result<LlavaVisionConfig> parse_llava_vision_config(std::string_view config_json, std::string_view source) {
  return guard_result<LlavaVisionConfig>([&] { return parse(config_json, source); });
}

onnx::ModelProto llava_vision_graph(const LlavaVisionConfig& c, const LlavaTensorNames& names,
                                    const InitializerSource& initializer, int batch) {
  onnx::ModelProto model;
  model.set_ir_version(8);
  model.set_producer_name("hostrun");
  auto* opset = model.add_opset_import();
  opset->set_domain("");
  opset->set_version(17);
  onnx::GraphProto& g = *model.mutable_graph();
  g.set_name("llava_vision");
  GraphWriter w(g, initializer);

  const std::int64_t d = c.hidden_size, heads = c.num_attention_heads, hd = d / heads;
  const std::int64_t side = c.patches_per_side(), patches = side * side, tokens = patches + 1;
  {
    auto* in = g.add_input();
    in->set_name("pixel_values");
    auto* type = in->mutable_type()->mutable_tensor_type();
    type->set_elem_type(onnx::TensorProto::FLOAT);
    for (std::int64_t dim : {std::int64_t(batch), std::int64_t(c.num_channels), std::int64_t(c.image_size), std::int64_t(c.image_size)})
      type->mutable_shape()->add_dim()->set_dim_value(dim);
  }
  w.scalar("quick_gelu_k", 1.702f);
  w.scalar("inv_sqrt2", float(1.0 / std::sqrt(2.0)));
  w.scalar("half", 0.5f);
  w.scalar("one_f", 1.0f);
  w.scalar("gelu_c", 0.044715f);
  w.scalar("sqrt_2_over_pi", float(std::sqrt(2.0 / std::numbers::pi)));
  w.scalar("attention_scale", float(1.0 / std::sqrt(double(hd))));

  // Embeddings: patches by a stride-p convolution, the class token in front, positions added.
  const std::string& v = names.vision;
  const std::string conv = w.node("Conv", {"pixel_values", w.weight(v + "embeddings.patch_embedding.weight")}, "patches",
                                  [&](onnx::NodeProto& n) {
                                    set_ints(n, "kernel_shape", {c.patch_size, c.patch_size});
                                    set_ints(n, "strides", {c.patch_size, c.patch_size});
                                  });
  const std::string flat = w.node("Reshape", {conv, w.ints("patch_flat_shape", {batch, d, patches})}, "patches");
  const std::string rows = w.node("Transpose", {flat}, "patches", [](onnx::NodeProto& n) { set_ints(n, "perm", {0, 2, 1}); });
  const std::string cls = w.node("Expand", {w.node("Reshape", {w.weight(v + "embeddings.class_embedding"), w.ints("cls_shape", {1, 1, d})}, "cls"),
                                            w.ints("cls_batch_shape", {batch, 1, d})},
                                 "cls");
  const std::string embedded = w.node("Concat", {cls, rows}, "embeddings", [](onnx::NodeProto& n) { set_int(n, "axis", 1); });
  const std::string positioned = w.node("Add", {embedded, w.weight(v + "embeddings.position_embedding.weight")}, "embeddings");
  // From here the encoder works on [batch * tokens, d] rows.
  std::string x = w.node("Reshape", {layer_norm(w, positioned, v + "pre_layrnorm.", c.layer_norm_eps), w.ints("rows_shape", {batch * tokens, d})}, "rows");
  w.ints("heads_shape", {batch, tokens, heads, hd});

  for (int l = 0; l < c.layers_run(); ++l) {
    const std::string p = fmt::format("{}encoder.layers.{}.", v, l);
    const std::string h = layer_norm(w, x, p + "layer_norm1.", c.layer_norm_eps);
    const auto split = [&](const std::string& t, std::vector<std::int64_t> perm) {
      return w.node("Transpose", {w.node("Reshape", {t, "heads_shape"}, "heads")}, "heads",
                    [perm](onnx::NodeProto& n) { set_ints(n, "perm", perm); });
    };
    // The scale after the head split, as torch's SDPA export has it: the CUDA executor folds a scalar Mul
    // between the split and the product into the fused attention, and q_proj's sum then reaches the
    // attention alone (written in bf16 by its GEMM).
    const std::string qh = w.node("Mul", {split(linear(w, h, p + "self_attn.q_proj."), {0, 2, 1, 3}), "attention_scale"},
                                  "q");                                                    // [b, H, T, hd]
    const std::string kh = split(linear(w, h, p + "self_attn.k_proj."), {0, 2, 3, 1});     // [b, H, hd, T]
    const std::string vh = split(linear(w, h, p + "self_attn.v_proj."), {0, 2, 1, 3});     // [b, H, T, hd]
    const std::string probs = w.node("Softmax", {w.node("MatMul", {qh, kh}, "scores")}, "probs",
                                     [](onnx::NodeProto& n) { set_int(n, "axis", -1); });
    const std::string context = w.node("Transpose", {w.node("MatMul", {probs, vh}, "context")}, "context",
                                       [](onnx::NodeProto& n) { set_ints(n, "perm", {0, 2, 1, 3}); });
    const std::string merged = w.node("Reshape", {context, "rows_shape"}, "context");
    x = w.node("Add", {x, linear(w, merged, p + "self_attn.out_proj.")}, "residual");
    const std::string m = linear(w, layer_norm(w, x, p + "layer_norm2.", c.layer_norm_eps), p + "mlp.fc1.");
    x = w.node("Add", {x, linear(w, activation(w, m, c.hidden_act), p + "mlp.fc2.")}, "residual");
  }

  // Feature selection ("default" drops the class token), then the projector.
  std::string features = w.node("Reshape", {x, w.ints("tokens_shape", {batch, tokens, d})}, "features");
  if (!c.keep_cls)
    features = w.node("Slice", {features, w.ints("drop_cls_start", {1}), w.ints("drop_cls_end", {tokens}), w.ints("drop_cls_axis", {1})}, "features");
  const std::int64_t kept = c.keep_cls ? tokens : patches;
  features = w.node("Reshape", {features, w.ints("kept_rows_shape", {batch * kept, d})}, "features");
  const std::string& mp = names.projector;
  std::string projected = linear(w, features, mp + "linear_1.", c.projector_bias);
  projected = linear(w, activation(w, projected, c.projector_hidden_act), mp + "linear_2.", c.projector_bias);
  onnx::NodeProto* out = g.add_node();
  out->set_op_type("Reshape");
  out->set_name("image_features");
  out->add_input(projected);
  out->add_input(w.ints("features_shape", {batch, kept, c.text_hidden_size}));
  out->add_output("image_features");
  auto* result = g.add_output();
  result->set_name("image_features");
  result->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  return model;
}

namespace {

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, std::move(message)); }

// transformers 5 folders keep the towers under "model.".
onnx_vision::LlavaTensorNames tensor_names(const WeightSource& weights) {
  const onnx_vision::LlavaTensorNames four{"vision_tower.vision_model.", "multi_modal_projector."};
  const onnx_vision::LlavaTensorNames five{"model.vision_tower.vision_model.", "model.multi_modal_projector."};
  for (const auto& names : {four, five})
    if (weights.tensor(names.vision + "embeddings.class_embedding")) return names;
  throw Error(ErrorCode::not_found, fmt::format("{} holds no CLIP vision tower (neither vision_tower.vision_model.* nor "
                                         "model.vision_tower.vision_model.*)",
                                         weights.directory()));
}

// A checkpoint tensor as an f32 initializer (ONNX's Conv and Gemm take no
// bf16, and the executors compute in f32 anyway).
onnx::TensorProto initializer_of(const WeightSource& weights, const std::string& name) {
  Result<TensorView> view = weights.tensor(name);
  if (!view) fail(view.status().code(), view.status().message());
  ref::DType stored;
  switch (view->dtype) {
    case DType::f32: stored = ref::DType::f32; break;
    case DType::bf16: stored = ref::DType::bf16; break;
    case DType::f16: stored = ref::DType::f16; break;
    default:
      fail(ErrorCode::invalid_argument, fmt::format("{}: tensor {} is {}; the vision tower's weights must be f32, bf16 "
                                                    "or f16",
                                                    weights.directory(), name, dtype_name(view->dtype)));
  }
  const std::size_t count = std::size_t(view->numel());
  std::string raw(count * sizeof(float), '\0');
  ref::convert_to_f32(view->data, stored, count, reinterpret_cast<float*>(raw.data()));
  onnx::TensorProto t;
  t.set_data_type(onnx::TensorProto::FLOAT);
  for (int k = 0; k < view->rank; ++k) t.add_dims(view->shape[k]);
  t.set_raw_data(std::move(raw));
  return t;
}

}  // namespace

Result<LlavaFolderGraph> llava_folder_graph(const WeightSource& weights, const LlavaVisionConfig& config, int batch) {
  return guard_result<LlavaFolderGraph>([&] {
    LlavaFolderGraph out;
    out.config = config;
    out.model = llava_vision_graph(config, tensor_names(weights),
                                   [&](const std::string& name) { return initializer_of(weights, name); }, batch);
    return out;
  });
}

Result<LlavaFolderGraph> llava_folder_graph(const WeightSource& weights, int batch) {
  Result<LlavaVisionConfig> config = parse_llava_vision_config(weights.config_json(), weights.directory() + "/config.json");
  if (!config) return config.status();
  return llava_folder_graph(weights, *config, batch);
}

}  // namespace hostrun::onnx_vision
