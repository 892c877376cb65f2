// LLaVA's image path as one ONNX graph, written from an HF
// LlavaForConditionalGeneration folder's config (issue 16: "HF LLaVA folders
// work with no Python"): CLIP's vision embeddings and the encoder layers up
// to `vision_feature_layer`, the feature selection, and the projector, so
// that the same executors run it as any exported graph.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <onnx/onnx_pb.h>

#include "hostrun/status.hpp"
#include "hostrun/weights.hpp"

namespace hostrun::onnx_vision {

// config.json's vision_config (CLIPVisionConfig: absent keys take its
// defaults, as transformers does) and the LLaVA keys around it.
struct LlavaVisionConfig {
  int hidden_size = 768;
  int intermediate_size = 3072;
  int num_hidden_layers = 12;
  int num_attention_heads = 12;
  int num_channels = 3;
  int image_size = 224;
  int patch_size = 32;
  float layer_norm_eps = 1e-5f;
  std::string hidden_act = "quick_gelu";  // the encoder's MLP: quick_gelu or gelu
  int vision_feature_layer = -2;          // index into hidden_states (0: the embeddings after pre_layrnorm)
  bool keep_cls = false;                  // vision_feature_select_strategy "full" (true) or "default"
  std::string projector_hidden_act = "gelu";
  bool projector_bias = true;             // multimodal_projector_bias
  int text_hidden_size = 4096;            // text_config.hidden_size
  std::int64_t image_token_id = -1;       // image_token_index (transformers 4) or image_token_id (5)

  int patches_per_side() const { return image_size / patch_size; }
  int tokens_per_image() const { return patches_per_side() * patches_per_side() + (keep_cls ? 1 : 0); }
  int layers_run() const { return vision_feature_layer < 0 ? num_hidden_layers + 1 + vision_feature_layer : vision_feature_layer; }
};

// Parses config.json's text; invalid_argument naming `source` and the key
// for anything missing, of the wrong type or unsupported (activations other
// than quick_gelu / gelu / gelu_pytorch_tanh, a feature layer out of range,
// a select strategy other than default / full, sizes that do not divide).
Result<LlavaVisionConfig> parse_llava_vision_config(std::string_view config_json, std::string_view source);

// The checkpoint's tensor names: `vision_tower.vision_model.` and
// `multi_modal_projector.` (transformers 4), each under `model.` in
// transformers 5 folders.
struct LlavaTensorNames {
  std::string vision;     // "vision_tower.vision_model." or "model.vision_tower.vision_model."
  std::string projector;  // "multi_modal_projector." or "model.multi_modal_projector."
};

// The initializer for checkpoint tensor `name` (its data in the proto, or
// external data pointing into the folder's safetensors files).
using InitializerSource = std::function<onnx::TensorProto(const std::string& name)>;

// The graph: input "pixel_values" [batch, channels, image, image] float,
// output "image_features" [batch, tokens_per_image, text_hidden_size];
// opset 17; every weight an initializer named as in the checkpoint.
onnx::ModelProto llava_vision_graph(const LlavaVisionConfig& config, const LlavaTensorNames& names,
                                    const InitializerSource& initializer, int batch = 1);

// The graph of a LLaVA folder as `weights` holds it: config.json parsed, the
// towers found under either layout's names, every weight an f32 initializer
// with its data in the proto (ONNX's Conv and Gemm take no bf16). What the
// plugin runs and `hostrun-vision-onnx` writes to a file. Errors name the
// folder and what is missing.
struct LlavaFolderGraph {
  LlavaVisionConfig config;
  onnx::ModelProto model;
};
Result<LlavaFolderGraph> llava_folder_graph(const WeightSource& weights, int batch = 1);
// The same from a config the caller already parsed from `weights`.
Result<LlavaFolderGraph> llava_folder_graph(const WeightSource& weights, const LlavaVisionConfig& config, int batch = 1);

}  // namespace hostrun::onnx_vision
