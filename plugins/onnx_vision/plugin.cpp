// The onnx_vision plugin: LLaVA's vision encoder (role VisionEncoder) as an
// ONNX graph, written at load from the folder's config.json and weights
// (llava_graph.hpp) and run by the CPU executor or, on a GPU, the CUDA one
// (cuda_executor.hpp). Images are decoded and preprocessed on the host by
// image_common exactly as LMDeploy + transformers do. In the built-in
// llava-llama3-cpu and llava-llama3-cuda manifests.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <fstream>
#include <utility>

#include <hostrun/plugin.hpp>
#include <hostrun/sdk.hpp>
#include <hostrun/vision.hpp>
#include <hostrun/weights.hpp>

#include "image_common/clip_preprocess.hpp"
#include "image_common/image.hpp"
#include "onnx_vision/cpu_executor.hpp"
#include "onnx_vision/graph.hpp"
#ifdef HOSTRUN_ONNX_VISION_CUDA
#include <cuda_runtime.h>

#include "onnx_vision/cuda_executor.hpp"
#endif
#include "onnx_vision/llava_graph.hpp"
#include "ref/dtype.hpp"

namespace {

using namespace hostrun;
using onnx_vision::HostTensor;

[[noreturn]] void fail(ErrorCode code, std::string message) { throw Error(code, std::move(message)); }

#ifdef HOSTRUN_ONNX_VISION_CUDA
// The encoder's own CUDA stream (non-blocking: it never waits on the legacy default stream).
class OwnedStream {
 public:
  OwnedStream() = default;
  static OwnedStream create() {
    OwnedStream s;
    if (cudaError_t e = cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking); e != cudaSuccess)
      fail(ErrorCode::internal, fmt::format("onnx_vision: a CUDA stream: {}", cudaGetErrorString(e)));
    return s;
  }
  OwnedStream(OwnedStream&& other) noexcept : stream_(std::exchange(other.stream_, nullptr)) {}
  OwnedStream& operator=(OwnedStream&& other) noexcept {
    std::swap(stream_, other.stream_);
    return *this;
  }
  ~OwnedStream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Page-locked staging for images' pixels on their way to the GPU. From
// pageable memory, cudaMemcpyAsync returns only once the copy is done, so the
// CPU could not decode the next image while the GPU ran the last. Slots are
// taken round-robin, each once the copy that last read it has run (its event).
class PinnedPixels {
 public:
  PinnedPixels(std::size_t floats, int slots) : floats_(floats) {
    if (cudaError_t e = cudaMallocHost(&memory_, floats * std::size_t(slots) * sizeof(float)); e != cudaSuccess)
      fail(ErrorCode::out_of_memory, fmt::format("onnx_vision: page-locked pixels: {}", cudaGetErrorString(e)));
    events_.resize(std::size_t(slots), nullptr);
    for (cudaEvent_t& event : events_)
      if (cudaError_t e = cudaEventCreateWithFlags(&event, cudaEventDisableTiming); e != cudaSuccess)
        fail(ErrorCode::internal, fmt::format("onnx_vision: an event: {}", cudaGetErrorString(e)));
  }
  PinnedPixels(const PinnedPixels&) = delete;
  PinnedPixels& operator=(const PinnedPixels&) = delete;
  ~PinnedPixels() {
    for (cudaEvent_t event : events_)
      if (event != nullptr) cudaEventSynchronize(event), cudaEventDestroy(event);
    if (memory_ != nullptr) cudaFreeHost(memory_);
  }
  // The next slot, once free.
  std::span<float> take() {
    slot_ = (slot_ + 1) % events_.size();
    if (cudaError_t e = cudaEventSynchronize(events_[slot_]); e != cudaSuccess)
      fail(ErrorCode::internal, fmt::format("onnx_vision: waiting for a pixel copy: {}", cudaGetErrorString(e)));
    return {memory_ + slot_ * floats_, floats_};
  }
  // The taken slot's copy is queued on `stream`.
  void copy_queued(cudaStream_t stream) {
    if (cudaError_t e = cudaEventRecord(events_[slot_], stream); e != cudaSuccess)
      fail(ErrorCode::internal, fmt::format("onnx_vision: recording a pixel copy: {}", cudaGetErrorString(e)));
  }

 private:
  std::size_t floats_;
  float* memory_ = nullptr;
  std::vector<cudaEvent_t> events_;
  std::size_t slot_ = 0;
};
#endif

class OnnxVisionEncoder final : public VisionEncoder {
 public:
  explicit OnnxVisionEncoder(const CreateContext& context)
      : library_(context.library), graph_file_(context.settings->get_string("graph")) {}

  Status load(const VisionLoadContext& context) noexcept override {
    return guard([&] {
      if (context.weights == nullptr) fail(ErrorCode::invalid_argument, "onnx_vision: no model folder to load from");
      const WeightSource& weights = *context.weights;
      Result<onnx_vision::LlavaVisionConfig> config =
          onnx_vision::parse_llava_vision_config(weights.config_json(), weights.directory() + "/config.json");
      if (!config) fail(config.status().code(), config.status().message());
      config_ = *config;
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
      if (graph_file_.empty()) {
        Result<onnx_vision::LlavaFolderGraph> written = onnx_vision::llava_folder_graph(weights, config_);
        if (!written) fail(written.status().code(), written.status().message());
        Result<onnx_vision::Graph> graph = onnx_vision::load_graph(std::move(written->model), {});
        if (!graph) fail(graph.status().code(), fmt::format("{}: the vision graph: {}", weights.directory(), graph.status().message()));
        graph_ = std::move(graph).value();
      } else {
        load_graph_file(weights.directory());
      }
      preprocess_ = *preprocess;
      max_images_ = std::max(context.max_images, 1);
      device_ = context.device;
      if (device_.kind == DeviceKind::cuda) load_on_cuda();
      loaded_ = true;
    });
  }

  // The `graph` setting: a graph from a file (hostrun-vision-onnx's, or any
  // with one image input [1, 3, S, S] and one output [1, tokens, width]) in
  // place of the one written from the folder. Its tokens per image are its
  // output's; its width must be the language model's.
  void load_graph_file(const std::string& folder) {
    std::filesystem::path file = graph_file_;
    if (file.is_relative()) file = std::filesystem::path(folder) / file;
    onnx::ModelProto model;
    {
      std::ifstream in(file, std::ios::binary);
      if (!in || !model.ParseFromIstream(&in))
        fail(ErrorCode::invalid_argument, fmt::format("vision.graph: {} cannot be read as an ONNX model", file.string()));
    }
    std::vector<std::string> inputs;
    for (const auto& input : model.graph().input()) {
      bool initializer = false;
      for (const auto& init : model.graph().initializer()) initializer = initializer || init.name() == input.name();
      if (!initializer) inputs.push_back(input.name());
    }
    if (inputs.size() != 1 || model.graph().output_size() != 1)
      fail(ErrorCode::invalid_argument, fmt::format("vision.graph: {} has {} image inputs and {} outputs; expected one "
                                                    "of each (pixel values -> image features)",
                                                    file.string(), inputs.size(), model.graph().output_size()));
    onnx_vision::GraphLoadOptions options;
    options.input_shapes[inputs[0]] = {1, 3, config_.image_size, config_.image_size};
    options.directory = file.parent_path();
    Result<onnx_vision::Graph> graph = onnx_vision::load_graph(std::move(model), options);
    if (!graph) fail(graph.status().code(), fmt::format("vision.graph: {}: {}", file.string(), graph.status().message()));
    const auto& out = graph->outputs[0].shape;
    if (out.size() != 3 || out[0] != 1 || out[2] != config_.text_hidden_size)
      fail(ErrorCode::invalid_argument,
           fmt::format("vision.graph: {} makes [{}] from one image; expected [1, tokens, {}] (the language model's "
                       "width: it must include the projector)",
                       file.string(), fmt::join(out, ", "), config_.text_hidden_size));
    tokens_per_image_ = out[1];
    input_name_ = inputs[0];
    graph_ = std::move(graph).value();
  }

  // The graph planned for the GPU; the host copy of its weights is dropped.
  void load_on_cuda() {
#ifdef HOSTRUN_ONNX_VISION_CUDA
    if (cudaError_t e = cudaSetDevice(device_.index); e != cudaSuccess)
      fail(ErrorCode::unsupported, fmt::format("onnx_vision: cuda:{}: {}", device_.index, cudaGetErrorString(e)));
    Result<std::unique_ptr<onnx_vision::CudaExecutor>> executor =
        onnx_vision::CudaExecutor::create(graph_, onnx_vision::Precision::bf16_tensor_cores);
    if (!executor) fail(executor.status().code(), fmt::format("the vision graph: {}", executor.status().message()));
    cuda_ = std::move(executor).value();
    stream_ = OwnedStream::create();
    pinned_ = std::make_unique<PinnedPixels>(std::size_t(3) * config_.image_size * config_.image_size,
                                             2 * int(max_images_));
    graph_.initializers.clear();
#else
    fail(ErrorCode::unsupported, "onnx_vision was built without CUDA; it runs its graphs on the CPU");
#endif
  }

  VisionInfo info() const noexcept override {
    VisionInfo v;
    if (!loaded_) return v;
    v.tokens_per_image = int32_t(tokens_per_image());
    v.hidden_size = config_.text_hidden_size;
    v.placeholder_id = TokenId(config_.image_token_id);
    v.placeholder = "<image>";
    v.image_height = v.image_width = config_.image_size;
    v.output_dtypes = dtype_bit(DType::f32) | dtype_bit(DType::bf16) | dtype_bit(DType::f16);
    v.device = device_;
    return v;
  }

  Status encode(std::span<const ImageData> images, const TensorView& out) noexcept override {
    return guard([&] {
      if (!loaded_) fail(ErrorCode::invalid_argument, "onnx_vision: encode before load");
      if (images.empty() || std::int64_t(images.size()) > max_images_)
        fail(ErrorCode::invalid_argument, fmt::format("onnx_vision: {} images in one call; 1 to {} (max_images)",
                                                      images.size(), max_images_));
      const std::int64_t tokens = tokens_per_image(), hidden = config_.text_hidden_size;
      if (out.device.kind != device_.kind || out.rank != 2 || out.shape[0] != std::int64_t(images.size()) * tokens ||
          out.shape[1] != hidden || !out.is_contiguous() ||
          (out.dtype != DType::f32 && out.dtype != DType::bf16 && out.dtype != DType::f16))
        fail(ErrorCode::invalid_argument,
             fmt::format("onnx_vision: the output must be contiguous {} memory of [{} x {}, {}] f32, bf16 or f16",
                         device_.kind == DeviceKind::cpu ? "host" : "device", images.size(), tokens, hidden));
      const int side = config_.image_size;
      std::vector<float> pixels;  // the CPU path's; on a GPU they go to page-locked staging
#ifdef HOSTRUN_ONNX_VISION_CUDA
      // The engine calls from a thread of its own, whose current device may be another.
      if (cuda_)
        if (cudaError_t e = cudaSetDevice(device_.index); e != cudaSuccess)
          fail(ErrorCode::internal, fmt::format("onnx_vision: cuda:{}: {}", device_.index, cudaGetErrorString(e)));
      // A failure on a later image returns only once the earlier images' work has run: the caller may
      // hand `out` to another request as soon as this call returns.
      struct FinishQueuedWork {
        cudaStream_t stream;
        ~FinishQueuedWork() {
          if (stream != nullptr) cudaStreamSynchronize(stream);
        }
      } finish_queued{cuda_ ? stream_.get() : nullptr};
#endif
      for (std::size_t i = 0; i < images.size(); ++i) {
        Result<image::RgbImage> decoded = image::decode_image(images[i].bytes);
        if (!decoded) fail(ErrorCode::invalid_argument, fmt::format("image {}: {}", i, decoded.status().message()));
#ifdef HOSTRUN_ONNX_VISION_CUDA
        const std::span<float> target = cuda_ ? pinned_->take() : cpu_pixels(pixels, side);
#else
        const std::span<float> target = cpu_pixels(pixels, side);
#endif
        if (Status s = image::clip_preprocess(*decoded, preprocess_, target); !s)
          fail(s.code(), fmt::format("image {}: {}", i, s.message()));
        const std::size_t offset = i * std::size_t(tokens * hidden);
#ifdef HOSTRUN_ONNX_VISION_CUDA
        if (cuda_) {
          // One stream: image i + 1's pixels land after image i's graph has read them,
          // and the CPU decodes image i + 1 while the GPU runs image i.
          std::byte* rows = static_cast<std::byte*>(out.data) + offset * (dtype_bits(out.dtype) / 8);
          Status s = cuda_->set_input(0, target, stream_.get());
          if (s) pinned_->copy_queued(stream_.get());
          if (s) s = cuda_->run(stream_.get());
          if (s) s = cuda_->copy_output(0, out.dtype, rows, stream_.get());
          if (!s) fail(s.code(), fmt::format("image {}: {}", i, s.message()));
          continue;
        }
#endif
        Result<std::vector<HostTensor>> features =
            onnx_vision::run_on_cpu(graph_, {{input_name_, HostTensor::floats({1, 3, side, side}, pixels)}});
        if (!features) fail(features.status().code(), fmt::format("image {}: {}", i, features.status().message()));
        const std::vector<float>& rows = features.value()[0].f;
        if (out.dtype == DType::f32) {
          std::copy(rows.begin(), rows.end(), static_cast<float*>(out.data) + offset);
        } else {
          const ref::DType stored = out.dtype == DType::bf16 ? ref::DType::bf16 : ref::DType::f16;
          ref::convert_from_f32(rows.data(), rows.size(), static_cast<std::uint16_t*>(out.data) + offset, stored);
        }
      }
#ifdef HOSTRUN_ONNX_VISION_CUDA
      if (cuda_)  // returns once `out` holds the embeddings (the contract: the model's stream reads them next)
        if (cudaError_t e = cudaStreamSynchronize(stream_.get()); e != cudaSuccess)
          fail(ErrorCode::internal, fmt::format("onnx_vision: encoding on cuda:{}: {}", device_.index, cudaGetErrorString(e)));
#endif
    });
  }

 private:
  // One image's [3, side, side] floats in `pixels`, allocated on first use.
  static std::span<float> cpu_pixels(std::vector<float>& pixels, int side) {
    pixels.resize(std::size_t(3) * side * side);
    return pixels;
  }

  std::int64_t tokens_per_image() const {
    return tokens_per_image_ > 0 ? tokens_per_image_ : config_.tokens_per_image();
  }

  LibraryPin library_;
  std::string graph_file_;  // the `graph` setting
  std::string input_name_ = "pixel_values";
  std::int64_t tokens_per_image_ = 0;  // a graph file's; 0: the config's
  bool loaded_ = false;
  onnx_vision::Graph graph_;
  onnx_vision::LlavaVisionConfig config_;
  image::ClipPreprocess preprocess_;
  std::int64_t max_images_ = 1;
#ifdef HOSTRUN_ONNX_VISION_CUDA
  OwnedStream stream_;  // encode()'s: never the model's
  std::unique_ptr<PinnedPixels> pinned_;
#endif
  Device device_{};
#ifdef HOSTRUN_ONNX_VISION_CUDA
  std::unique_ptr<onnx_vision::CudaExecutor> cuda_;  // on a GPU
#endif
};

// The CPU always; a GPU when built with CUDA and the device exists.
Status probe(const Device& device) noexcept {
  if (device.kind == DeviceKind::cpu) return {};
#ifdef HOSTRUN_ONNX_VISION_CUDA
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || device.index >= devices)
    return {ErrorCode::unsupported, fmt::format("no CUDA device cuda:{}", device.index)};
  return {};
#else
  return {ErrorCode::unsupported, "built without CUDA: runs on the CPU only"};
#endif
}

const SettingSpec kSettings[] = {
    {"graph", SettingType::string,
     "An ONNX file (relative: in the model folder) to run instead of the graph written from the folder: one input "
     "[1, 3, S, S], one output [1, tokens, language model width] (hostrun-vision-onnx writes one)", false, "\"\""},
};
const RoleEntry kRoles[] = {role_entry<VisionEncoder, OnnxVisionEncoder>(kSettings, &probe)};

}  // namespace

HOSTRUN_PLUGIN("onnx_vision", "0.1.0",
               "LLaVA's CLIP vision tower and projector as an ONNX graph written from the model folder, run on the "
               "CPU or a CUDA GPU; images decoded and preprocessed as LMDeploy and transformers do",
               kRoles)
