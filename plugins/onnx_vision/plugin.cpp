// The onnx_vision plugin: LLaVA's vision encoder (role VisionEncoder) as an
// ONNX graph, written at load from the folder's config.json and weights
// (llava_graph.hpp) and run by the CPU executor. Images are decoded and
// preprocessed by image_common exactly as LMDeploy + transformers do.
// In the built-in llava-llama3-cpu manifest; CUDA needs the executor that
// is not built yet (README.md).
#include <fmt/format.h>

#include <hostrun/plugin.hpp>
#include <hostrun/sdk.hpp>
#include <hostrun/vision.hpp>
#include <hostrun/weights.hpp>

#include "image_common/clip_preprocess.hpp"
#include "image_common/image.hpp"
#include "onnx_vision/cpu_executor.hpp"
#include "onnx_vision/graph.hpp"
#include "onnx_vision/llava_graph.hpp"
#include "ref/dtype.hpp"

namespace {

using namespace hostrun;
using onnx_vision::HostTensor;

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, std::move(message)); }

// transformers 5 folders keep the towers under "model.".
onnx_vision::LlavaTensorNames tensor_names(const WeightSource& weights) {
  const onnx_vision::LlavaTensorNames four{"vision_tower.vision_model.", "multi_modal_projector."};
  const onnx_vision::LlavaTensorNames five{"model.vision_tower.vision_model.", "model.multi_modal_projector."};
  for (const auto& names : {four, five})
    if (weights.tensor(names.vision + "embeddings.class_embedding")) return names;
  fail(ErrorCode::not_found, fmt::format("{} holds no CLIP vision tower (neither vision_tower.vision_model.* nor "
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

class OnnxVisionEncoder final : public VisionEncoder {
 public:
  explicit OnnxVisionEncoder(const CreateContext& context) : library_(context.library) {}

  Status load(const VisionLoadContext& context) noexcept override {
    return guard([&] {
      if (context.weights == nullptr) fail(ErrorCode::invalid_argument, "onnx_vision: no model folder to load from");
      if (context.device.kind != DeviceKind::cpu)
        fail(ErrorCode::unsupported, fmt::format("onnx_vision runs its graphs on the CPU only so far; asked for "
                                                 "cuda:{}",
                                                 context.device.index));
      const WeightSource& weights = *context.weights;
      Result<onnx_vision::LlavaVisionConfig> config =
          onnx_vision::parse_llava_vision_config(weights.config_json(), weights.directory() + "/config.json");
      if (!config) fail(config.status().code(), config.status().message());
      Result<image::ClipPreprocess> preprocess = image::read_clip_preprocess(weights);
      if (!preprocess) fail(preprocess.status().code(), preprocess.status().message());
      if (!preprocess->do_center_crop || preprocess->crop_height != config->image_size ||
          preprocess->crop_width != config->image_size)
        fail(ErrorCode::invalid_argument,
             fmt::format("{}: the image processor {} but the vision tower takes {} x {} images", weights.directory(),
                         preprocess->do_center_crop
                             ? fmt::format("crops to {} x {}", preprocess->crop_width, preprocess->crop_height)
                             : std::string("does not crop"),
                         config->image_size, config->image_size));
      const onnx_vision::LlavaTensorNames names = tensor_names(weights);
      onnx::ModelProto model = onnx_vision::llava_vision_graph(
          *config, names, [&](const std::string& name) { return initializer_of(weights, name); });
      Result<onnx_vision::Graph> graph = onnx_vision::load_graph(std::move(model), {});
      if (!graph) fail(graph.status().code(), fmt::format("{}: the vision graph: {}", weights.directory(), graph.status().message()));
      graph_ = std::move(graph).value();
      config_ = *config;
      preprocess_ = *preprocess;
      max_images_ = std::max(context.max_images, 1);
      device_ = context.device;
      loaded_ = true;
    });
  }

  VisionInfo info() const noexcept override {
    VisionInfo v;
    if (!loaded_) return v;
    v.tokens_per_image = config_.tokens_per_image();
    v.hidden_size = config_.text_hidden_size;
    v.placeholder_id = TokenId(config_.image_token_id);
    v.placeholder = "<image>";
    v.image_height = v.image_width = config_.image_size;
    v.output_dtypes = dtype_bit(DType::f32) | dtype_bit(DType::bf16) | dtype_bit(DType::f16);
    v.device = device_;
    return v;
  }

  Status encode(std::span<const ImageData> images, const ExecContext&, const TensorView& out) noexcept override {
    return guard([&] {
      if (!loaded_) fail(ErrorCode::invalid_argument, "onnx_vision: encode before load");
      if (images.empty() || std::int64_t(images.size()) > max_images_)
        fail(ErrorCode::invalid_argument, fmt::format("onnx_vision: {} images in one call; 1 to {} (max_images)",
                                                      images.size(), max_images_));
      const std::int64_t tokens = config_.tokens_per_image(), hidden = config_.text_hidden_size;
      if (out.device.kind != DeviceKind::cpu || out.rank != 2 || out.shape[0] != std::int64_t(images.size()) * tokens ||
          out.shape[1] != hidden || !out.is_contiguous() ||
          (out.dtype != DType::f32 && out.dtype != DType::bf16 && out.dtype != DType::f16))
        fail(ErrorCode::invalid_argument,
             fmt::format("onnx_vision: the output must be contiguous host memory of [{} x {}, {}] f32, bf16 or f16",
                         images.size(), tokens, hidden));
      const int side = config_.image_size;
      std::vector<float> pixels(std::size_t(3) * side * side);
      for (std::size_t i = 0; i < images.size(); ++i) {
        Result<image::RgbImage> decoded = image::decode_image(images[i].bytes);
        if (!decoded) fail(ErrorCode::invalid_argument, fmt::format("image {}: {}", i, decoded.status().message()));
        if (Status s = image::clip_preprocess(*decoded, preprocess_, pixels); !s)
          fail(s.code(), fmt::format("image {}: {}", i, s.message()));
        Result<std::vector<HostTensor>> features =
            onnx_vision::run_on_cpu(graph_, {{"pixel_values", HostTensor::floats({1, 3, side, side}, pixels)}});
        if (!features) fail(features.status().code(), fmt::format("image {}: {}", i, features.status().message()));
        const std::vector<float>& rows = features.value()[0].f;
        const std::size_t offset = i * std::size_t(tokens * hidden);
        if (out.dtype == DType::f32) {
          std::copy(rows.begin(), rows.end(), static_cast<float*>(out.data) + offset);
        } else {
          const ref::DType stored = out.dtype == DType::bf16 ? ref::DType::bf16 : ref::DType::f16;
          ref::convert_from_f32(rows.data(), rows.size(), static_cast<std::uint16_t*>(out.data) + offset, stored);
        }
      }
    });
  }

 private:
  LibraryPin library_;
  bool loaded_ = false;
  onnx_vision::Graph graph_;
  onnx_vision::LlavaVisionConfig config_;
  image::ClipPreprocess preprocess_;
  std::int64_t max_images_ = 1;
  Device device_{};
};

// The encoder's output must be host memory (the CPU executor writes it), so
// the language model must be on the CPU too.
Status probe(const Device& device) noexcept {
  if (device.kind == DeviceKind::cpu) return {};
  return {ErrorCode::unsupported, fmt::format("runs on the CPU only so far; asked for cuda:{}", device.index)};
}

const RoleEntry kRoles[] = {role_entry_without_settings<VisionEncoder, OnnxVisionEncoder>(&probe)};

}  // namespace

HOSTRUN_PLUGIN("onnx_vision", "0.1.0",
               "LLaVA's CLIP vision tower and projector as an ONNX graph written from the model folder, run on the "
               "CPU; images decoded and preprocessed as LMDeploy and transformers do",
               kRoles)
