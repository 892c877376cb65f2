// VisionEncoder conformance: what every vision plugin must do, whatever its
// model (sdk/include/hostrun/vision.hpp). Rows: the fixture plugin
// (tests/plugins) and onnx_vision on a toy LLaVA folder written here. Each
// row must load, describe itself consistently, and encode images into
// [images x tokens_per_image, hidden_size] deterministically, each image
// independent of the others in its call, in every dtype it offers; it must
// refuse a wrong output, too many images and bad image bytes (naming the
// image's index) with invalid_argument. Built with HOSTRUN_CONFORMANCE_CUDA
// (conformance_vision_gpu, label gpu) the same suite runs the GPU rows
// (onnx_vision's CUDA executor) with the output in device memory, encoded on
// a stream of the suite's.
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>

#include "../support/temp_dir.hpp"
#include "checkpoint/model_directory.hpp"
#include "checkpoint/safetensors.hpp"
#include "hostrun/plugin.hpp"
#include "hostrun/vision.hpp"
#include "support.hpp"
#ifdef HOSTRUN_CONFORMANCE_CUDA
#include "cuda_memory.hpp"
#else
#include "device_memory.hpp"
#endif

namespace conformance {
namespace {

using namespace hostrun;

std::vector<std::uint8_t> image_fixture(const char* name) {
  std::ifstream in(fs::path(HOSTRUN_IMAGE_FIXTURE_DIR) / name, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "missing " << name);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A LLaVA folder at toy size (CLIP 8 wide, 2 heads, 3 layers, 4 x 4 images of 2 x 2 patches; projector to 6),
// random bf16 weights, transformers 4's names.
void write_toy_llava(const fs::path& dir) {
  std::vector<std::vector<std::byte>> storage;
  std::vector<checkpoint::TensorData> tensors;
  std::uint32_t seed = 11;
  const auto add = [&](std::string name, std::vector<int64_t> shape, float scale, float shift = 0.0f) {
    std::size_t n = 1;
    for (int64_t d : shape) n *= std::size_t(d);
    std::vector<float> values = random_values(n, seed++, scale);
    for (float& v : values) v += shift;
    storage.emplace_back(n * 2);
    ref::convert_from_f32(values.data(), n, storage.back().data(), ref::DType::bf16);
    tensors.push_back({std::move(name), DType::bf16, std::move(shape), std::span<const std::byte>(storage.back())});
  };
  const std::string v = "vision_tower.vision_model.";
  add(v + "embeddings.patch_embedding.weight", {8, 3, 2, 2}, 0.5f);
  add(v + "embeddings.class_embedding", {8}, 0.5f);
  add(v + "embeddings.position_embedding.weight", {5, 8}, 0.1f);
  const auto norm = [&](const std::string& p) {
    add(p + "weight", {8}, 0.2f, 1.0f);
    add(p + "bias", {8}, 0.1f);
  };
  const auto linear = [&](const std::string& p, int64_t out, int64_t in) {
    add(p + "weight", {out, in}, 0.5f);
    add(p + "bias", {out}, 0.1f);
  };
  norm(v + "pre_layrnorm.");
  for (int l = 0; l < 3; ++l) {
    const std::string p = fmt::format("{}encoder.layers.{}.", v, l);
    norm(p + "layer_norm1.");
    norm(p + "layer_norm2.");
    for (const char* proj : {"q_proj.", "k_proj.", "v_proj.", "out_proj."}) linear(p + "self_attn." + proj, 8, 8);
    linear(p + "mlp.fc1.", 16, 8);
    linear(p + "mlp.fc2.", 8, 16);
  }
  norm(v + "post_layernorm.");  // present in real folders; LLaVA never reads it
  linear("multi_modal_projector.linear_1.", 6, 8);
  linear("multi_modal_projector.linear_2.", 6, 6);
  const Status written = checkpoint::write_safetensors(dir / "model.safetensors", tensors);
  REQUIRE_MESSAGE(written.is_ok(), written.message());
  std::ofstream(dir / "config.json") << R"({
  "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "image_token_index": 7,
  "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
  "text_config": {"model_type": "llama", "hidden_size": 6},
  "vision_config": {"model_type": "clip_vision_model", "hidden_size": 8, "intermediate_size": 16,
                    "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 4, "patch_size": 2}})";
  std::ofstream(dir / "preprocessor_config.json") << R"({
  "crop_size": {"height": 4, "width": 4}, "do_center_crop": true, "do_normalize": true, "do_rescale": true,
  "do_resize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073],
  "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": {"shortest_edge": 4}})";
}

struct VisionRow {
  const char* plugin;
  SettingList settings;
  std::function<void(const fs::path&)> write_folder;  // the model folder the encoder loads from
};

std::vector<VisionRow> vision_rows() {
#ifdef HOSTRUN_CONFORMANCE_CUDA
  return {{"onnx_vision", {}, write_toy_llava}};
#endif
  return {
      {"fixture", {{"tokens_per_image", SettingValue(std::int64_t(3))}, {"hidden_size", SettingValue(std::int64_t(5))}},
       [](const fs::path& dir) {  // it reads nothing, but a folder holds weights
         const float one = 1.0f;
         const checkpoint::TensorData tensor{"unused", DType::f32, {1},
                                             std::as_bytes(std::span<const float>(&one, 1))};
         REQUIRE(checkpoint::write_safetensors(dir / "model.safetensors", std::span(&tensor, 1)).is_ok());
         std::ofstream(dir / "config.json") << "{}";
       }},
      {"onnx_vision", {}, write_toy_llava},
  };
}

DeviceMemory& memory() {
#ifdef HOSTRUN_CONFORMANCE_CUDA
  static CudaMemory m;
#else
  static HostMemory m;
#endif
  return m;
}

// `rows` x `width` of `dtype` encoded into the device's memory, read back as stored.
template <typename T>
std::vector<T> encode_as(VisionEncoder& encoder, const std::vector<ImageData>& images, DType dtype, int64_t rows,
                         int64_t width, Status* status = nullptr) {
  std::vector<T> out(std::size_t(rows * width));
  DeviceBuffer buffer(memory(), out.size() * sizeof(T));
  const TensorView view = TensorView::contiguous(buffer.data(), dtype, {rows, width}, memory().device());
  // No synchronization: encode() returns once `view` holds the embeddings.
  const Status s = encoder.encode(images, view);
  if (status) *status = s;
  else REQUIRE_MESSAGE(s.is_ok(), s.message());
  if (s.is_ok()) memory().download(out.data(), buffer.data(), out.size() * sizeof(T));
  return out;
}

std::vector<float> encode_f32(VisionEncoder& encoder, const std::vector<ImageData>& images, Status* status = nullptr) {
  const VisionInfo info = encoder.info();
  return encode_as<float>(encoder, images, DType::f32, int64_t(images.size()) * info.tokens_per_image,
                          info.hidden_size, status);
}

}  // namespace

TEST_SUITE("vision") {
  TEST_CASE("vision encoders: load, describe, encode deterministically and independently; refuse bad calls") {
    const ImageData first{"image/png", image_fixture("rgb.png")};
    const ImageData second{"image/jpeg", image_fixture("rgb420.jpg")};
    const ImageData third{"image/webp", image_fixture("lossy.webp")};
    for (const VisionRow& row : vision_rows()) {
      INFO("row: " << std::string(row.plugin));
      auto registry = plugin_registry();
      REQUIRE_MESSAGE(registry->find(row.plugin), missing_plugin(*registry, row.plugin));
      auto made = registry->create<VisionEncoder>(row.plugin, settings_of(row.settings), nullptr, "vision",
                                                  memory().device());
      REQUIRE_MESSAGE(made.has_value(), made.status().message());
      VisionEncoder& encoder = *made.value();
      hostrun::test::TempDir dir("conformance-vision");
      row.write_folder(dir.path());
      auto folder = checkpoint::ModelDirectory::open(dir.path());
      REQUIRE_MESSAGE(folder.has_value(), folder.status().message());
      VisionLoadContext load;
      load.weights = folder.value().get();
      load.device = memory().device();
      load.activation_dtype = DType::f32;
      load.max_images = 2;
      const Status loaded = encoder.load(load);
      REQUIRE_MESSAGE(loaded.is_ok(), loaded.message());

      const VisionInfo info = encoder.info();
      CHECK(info.tokens_per_image > 0);
      CHECK(info.hidden_size > 0);
      CHECK(info.placeholder_id >= 0);
      CHECK_FALSE(info.placeholder.empty());
      CHECK(info.image_height > 0);
      CHECK(info.image_width > 0);
      CHECK((info.output_dtypes & dtype_bit(DType::f32)) != 0);
      CHECK(info.device.kind == memory().device().kind);

      const std::vector<float> a = encode_f32(encoder, {first});
      for (float x : a) REQUIRE(std::isfinite(x));
      CHECK(encode_f32(encoder, {first}) == a);  // deterministic
      const std::vector<float> b = encode_f32(encoder, {second});
      CHECK(a != b);  // the image matters
      std::vector<float> both = a;
      both.insert(both.end(), b.begin(), b.end());
      CHECK(encode_f32(encoder, {first, second}) == both);  // images in one call stay independent
      std::vector<float> elsewhere;  // the engine calls from a thread of its own
      Status elsewhere_status;
      std::thread([&] { elsewhere = encode_f32(encoder, {second}, &elsewhere_status); }).join();
      CHECK_MESSAGE(elsewhere_status.is_ok(), elsewhere_status.message());
      CHECK(elsewhere == b);

      for (DType dtype : {DType::bf16, DType::f16}) {  // every dtype offered: the f32 result rounded once
        if ((info.output_dtypes & dtype_bit(dtype)) == 0) continue;
        INFO("dtype: " << dtype_name(dtype));
        const std::vector<std::uint16_t> out =
            encode_as<std::uint16_t>(encoder, {first}, dtype, info.tokens_per_image, info.hidden_size);
        std::vector<float> widened(a.size());
        ref::convert_to_f32(out.data(), ref_dtype(dtype), out.size(), widened.data());
        CHECK(widened == rounded_to(a, dtype));
      }

      Status refused;
      encode_f32(encoder, {first, second, third}, &refused);  // max_images is 2
      CHECK(refused.code() == ErrorCode::invalid_argument);
      encode_f32(encoder, {first, ImageData{"image/png", {}}}, &refused);
      CHECK(refused.code() == ErrorCode::invalid_argument);
      CHECK_MESSAGE(refused.message().find("image 1") != std::string::npos, refused.message());
      encode_as<float>(encoder, {first}, DType::f32, int64_t(info.tokens_per_image) * info.hidden_size - 1, 1, &refused);
      CHECK(refused.code() == ErrorCode::invalid_argument);
    }
  }
}

}  // namespace conformance
