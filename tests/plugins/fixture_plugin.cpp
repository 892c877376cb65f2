// Test plugin: a Tokenizer role with one setting of every type (its decoders
// pin the library and count as live objects), and a Frontend role whose
// probe can decline. Built with the real SDK macro, so the
// loader tests exercise exactly what a third party would ship.
#include <algorithm>
#include <cstdlib>
#include <hostrun/sdk.hpp>

namespace {

using namespace hostrun;

// Counts live objects so a test can see destructors run inside the library.
int live_objects = 0;

// Streams each id as its decimal text and a space.
class FixtureDecoder final : public IncrementalDecoder {
 public:
  FixtureDecoder() { ++live_objects; }
  ~FixtureDecoder() override { --live_objects; }
  Status push(TokenId id, std::string& piece) noexcept override {
    return guard([&] { piece += std::to_string(id) + " "; });
  }
  Status finish(std::string&) noexcept override { return {}; }
};

class FixtureTokenizer final : public Tokenizer {
 public:
  explicit FixtureTokenizer(const CreateContext& context)
      : file_(context.settings->get_string("file")),
        scale_(context.settings->get_number("scale")),
        library_(context.library) {
    if (context.settings->get_int("fail_with") == 1) throw Error(ErrorCode::invalid_argument, "asked to fail");
    if (context.settings->get_int("fail_with") == 2) throw 42;  // not even an exception type
    ++live_objects;
  }
  ~FixtureTokenizer() override { --live_objects; }
  Status encode(std::string_view text, const EncodeOptions&, std::vector<TokenId>& ids) const noexcept override {
    ids.push_back(int32_t(text.size()));
    ids.push_back(live_objects);
    return {};
  }
  Status decode(std::span<const TokenId>, const DecodeOptions&, std::string& text) const noexcept override {
    text += file_;
    return {};
  }
  PluginPtr<IncrementalDecoder> incremental_decoder(const DecodeOptions&) const noexcept override {
    try {
      return make_pinned<FixtureDecoder>(library_);
    } catch (...) {
      return nullptr;
    }
  }
  int32_t vocab_size() const noexcept override { return int32_t(scale_); }
  std::optional<TokenId> token_to_id(std::string_view) const noexcept override { return std::nullopt; }
  std::string id_to_token(TokenId) const noexcept override { return {}; }
  bool is_special(TokenId) const noexcept override { return false; }
  SpecialTokenIds special_tokens() const noexcept override { return {}; }

 private:
  std::string file_;
  double scale_;
  LibraryPin library_;
};

class FixtureFrontend final : public Frontend {
 public:
  explicit FixtureFrontend(const CreateContext&) {}
  Status run(EngineHandle&) noexcept override { return {}; }
  void stop() noexcept override {}
};

// A vision encoder with settings, so `manifest check` shows a [vision]
// instance: each image becomes tokens_per_image rows of width hidden_size,
// every value the image's mean byte (f32 output only).
class FixtureVision final : public VisionEncoder {
 public:
  explicit FixtureVision(const CreateContext& context)
      : tokens_per_image_(int32_t(context.settings->get_int("tokens_per_image"))),
        hidden_size_(int32_t(context.settings->get_int("hidden_size"))) {}
  Status load(const VisionLoadContext& context) noexcept override {
    device_ = context.device;
    max_images_ = context.max_images;
    return {};
  }
  VisionInfo info() const noexcept override {
    VisionInfo v;
    v.tokens_per_image = tokens_per_image_;
    v.hidden_size = hidden_size_;
    v.placeholder_id = 0;
    v.placeholder = "<image>";
    v.image_height = v.image_width = 8;
    v.output_dtypes = dtype_bit(DType::f32);
    v.device = device_;
    return v;
  }
  Status encode(std::span<const ImageData> images, const TensorView& out) noexcept override {
    if (images.size() > size_t(max_images_))
      return {ErrorCode::invalid_argument, "fixture vision: more than max_images images in one call"};
    if (out.dtype != DType::f32 || out.device.kind != DeviceKind::cpu || out.rank != 2 ||
        out.shape[0] != int64_t(images.size()) * tokens_per_image_ || out.shape[1] != hidden_size_)
      return {ErrorCode::invalid_argument, "fixture vision: expected [images * tokens, hidden] f32 host memory"};
    for (size_t i = 0; i < images.size(); ++i) {
      if (images[i].bytes.empty()) return {ErrorCode::invalid_argument, "fixture vision: image " + std::to_string(i) + " is empty"};
      double sum = 0;
      for (uint8_t b : images[i].bytes) sum += b;
      const float mean = float(sum / double(images[i].bytes.size()));
      std::fill_n(out.as<float>() + i * size_t(tokens_per_image_) * size_t(hidden_size_),
                  size_t(tokens_per_image_) * size_t(hidden_size_), mean);
    }
    return {};
  }

 private:
  int32_t tokens_per_image_;
  int32_t hidden_size_;
  int32_t max_images_ = 1;
  Device device_{};
};

// Declines CUDA devices always, and every device when the test asks.
Status frontend_probe(const Device& device) noexcept {
  return guard([&]() -> Status {
    if (device.kind == DeviceKind::cuda)
      return {ErrorCode::unsupported, "runs on the CPU only; asked for cuda:" + std::to_string(device.index)};
    if (std::getenv("HOSTRUN_TEST_DECLINE")) return {ErrorCode::unsupported, "no test device on this machine"};
    return {};
  });
}

const SettingSpec kTokenizerSettings[] = {
    {"file", SettingType::string, "a file", true, nullptr, -1e300, 1e300, true},
    {"add_bos", SettingType::boolean, "a flag", false, "true"},
    {"budget", SettingType::integer, "an integer in 1..100", false, "10", 1, 100},
    {"scale", SettingType::number, "a number", false, "0.5"},
    {"stops", SettingType::string_list, "strings", false, "[]"},
    {"fail_with", SettingType::integer, "0: succeed, 1: throw Error, 2: throw an int", false, "0"},
};
const SettingSpec kVisionSettings[] = {
    {"tokens_per_image", SettingType::integer, "embeddings per image", false, "4", 1, 4096},
    {"hidden_size", SettingType::integer, "width of each embedding", false, "8", 1, 65536},
};
const RoleEntry kRoles[] = {
    role_entry<Tokenizer, FixtureTokenizer>(kTokenizerSettings),
    role_entry_without_settings<Frontend, FixtureFrontend>(&frontend_probe),
    role_entry<VisionEncoder, FixtureVision>(kVisionSettings),
};

}  // namespace

HOSTRUN_PLUGIN("fixture", "0.0.1", "Test fixture plugin", kRoles)
