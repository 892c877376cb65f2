// plugins/image_common against PIL (tests/fixtures/images, written by
// scripts/make-image-fixtures.py with Debian's Pillow): decoding as
// Image.open(...).convert("RGB"), and CLIP's resize / crop / pad as
// transformers and LLaVA do them. Then hostile bytes: refused, never a crash.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "image_common/clip_preprocess.hpp"
#include "hostrun/weights.hpp"
#include "image_common/image.hpp"

namespace img = hostrun::image;

namespace {

const std::string kDir = HOSTRUN_IMAGE_FIXTURE_DIR;

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "missing fixture " << path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

img::RgbImage read_ppm(const std::string& path) {
  const std::vector<std::uint8_t> bytes = read_file(path);
  std::istringstream header(std::string(bytes.begin(), bytes.begin() + std::min<std::size_t>(bytes.size(), 64)));
  std::string magic;
  int width = 0, height = 0, maximum = 0;
  header >> magic >> width >> height >> maximum;
  REQUIRE(magic == "P6");
  REQUIRE(maximum == 255);
  const std::size_t start = std::size_t(header.tellg()) + 1;  // one whitespace byte after 255
  img::RgbImage image;
  image.width = width;
  image.height = height;
  image.rgb.assign(bytes.begin() + std::ptrdiff_t(start), bytes.end());
  REQUIRE(image.rgb.size() == std::size_t(width) * height * 3);
  return image;
}

img::RgbImage decode_file(const std::string& name) {
  const auto decoded = img::decode_image(read_file(kDir + "/" + name));
  REQUIRE_MESSAGE(decoded.has_value(), name << ": " << decoded.status().message());
  return decoded.value();
}

// Largest difference of any sample, and how many samples differ.
struct Difference {
  int largest = 0;
  std::size_t count = 0;
};
Difference compare(const img::RgbImage& a, const img::RgbImage& b) {
  REQUIRE(a.width == b.width);
  REQUIRE(a.height == b.height);
  Difference d;
  for (std::size_t i = 0; i < a.rgb.size(); ++i) {
    const int e = std::abs(int(a.rgb[i]) - int(b.rgb[i]));
    d.largest = std::max(d.largest, e);
    d.count += e != 0;
  }
  return d;
}

const char* const kSources[] = {"rgb.png",     "rgba.png",        "palette.png", "grey.png",     "grey_alpha.png",
                                "grey16.png",  "tall.png",        "rgb420.jpg",  "rgb444.jpg",   "progressive.jpg",
                                "grey.jpg",    "cmyk.jpg",        "lossy.webp",  "lossless.webp", "rgba.webp",
                                "rgb.gif",     "interlaced.gif"};

}  // namespace

TEST_CASE("decode_image gives PIL's convert('RGB') pixels, sample for sample") {
  for (const char* name : kSources) {
    CAPTURE(name);
    const img::RgbImage ours = decode_file(name);
    const img::RgbImage pil = read_ppm(kDir + "/" + name + ".ppm");
    const Difference d = compare(ours, pil);
    CHECK_MESSAGE(d.count == 0, std::string(name) << ": " << d.count << " samples differ, by up to " << d.largest);
  }
}

TEST_CASE("sniff_image_format reads the signature") {
  CHECK(img::sniff_image_format(read_file(kDir + "/rgb.png")).value() == img::ImageFormat::png);
  CHECK(img::sniff_image_format(read_file(kDir + "/rgb420.jpg")).value() == img::ImageFormat::jpeg);
  CHECK(img::sniff_image_format(read_file(kDir + "/lossy.webp")).value() == img::ImageFormat::webp);
  CHECK(img::sniff_image_format(read_file(kDir + "/rgb.gif")).value() == img::ImageFormat::gif);
  const std::vector<std::uint8_t> bmp = {'B', 'M', 0, 0, 0, 0};
  const auto refused = img::sniff_image_format(bmp);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.status().message().find("not a PNG, JPEG, WebP or GIF image (first bytes 424d") != std::string::npos);
  CHECK(img::sniff_image_format({}).status().message() == "the image is empty (0 bytes)");
}

TEST_CASE("CLIP pixels (pad, shortest-edge bicubic resize, centre crop) match PIL and transformers") {
  std::ifstream cases(kDir + "/cases.txt");
  REQUIRE(cases.good());
  int seen = 0;
  std::string source, reference;
  int pad = 0, edge = 0, crop_w = 0, crop_h = 0;
  while (cases >> source >> pad >> edge >> crop_w >> crop_h >> reference) {
    CAPTURE(reference);
    img::ClipPreprocess params;
    params.pad_to_square = pad != 0;
    params.shortest_edge = edge;
    params.crop_width = crop_w;
    params.crop_height = crop_h;
    const img::RgbImage decoded = decode_file(source);
    const img::RgbImage ours = img::clip_pixels(decoded, params);
    const Difference d = compare(ours, decode_file(reference));
    CHECK_MESSAGE(d.count == 0, reference << ": " << d.count << " samples differ, by up to " << d.largest);
    const auto size = img::clip_output_size(decoded.width, decoded.height, params);
    CHECK(size[0] == crop_w);
    CHECK(size[1] == crop_h);
    ++seen;
  }
  CHECK(seen == 6);
}

TEST_CASE("the sizes transformers computes") {
  using Size = std::array<int, 2>;
  CHECK(img::shortest_edge_size(640, 480, 336) == Size{448, 336});
  CHECK(img::shortest_edge_size(480, 640, 336) == Size{336, 448});
  CHECK(img::shortest_edge_size(97, 61, 336) == Size{534, 336});  // int(336 * 97 / 61) = int(534.29...)
  CHECK(img::shortest_edge_size(300, 300, 336) == Size{336, 336});
  CHECK(img::shortest_edge_size(1, 3, 2) == Size{2, 6});
  img::ClipPreprocess params;
  CHECK(img::mean_color(params) == std::array<std::uint8_t, 3>{122, 116, 104});
  params.do_center_crop = false;
  CHECK(img::clip_output_size(640, 480, params) == Size{448, 336});
  params.pad_to_square = true;
  CHECK(img::clip_output_size(640, 480, params) == Size{336, 336});
}

TEST_CASE("resize_bicubic: a flat image stays flat, the same size is a copy") {
  img::RgbImage flat;
  flat.width = 7;
  flat.height = 5;
  for (int i = 0; i < 7 * 5; ++i) flat.rgb.insert(flat.rgb.end(), {200, 3, 255});
  for (const auto& [w, h] : std::vector<std::pair<int, int>>{{1, 1}, {3, 11}, {40, 2}, {7, 50}, {13, 5}}) {
    const img::RgbImage out = img::resize_bicubic(flat, w, h);
    REQUIRE(out.width == w);
    REQUIRE(out.height == h);
    for (std::size_t i = 0; i < out.rgb.size(); i += 3) {
      CHECK(out.rgb[i] == 200);
      CHECK(out.rgb[i + 1] == 3);
      CHECK(out.rgb[i + 2] == 255);
    }
  }
  const img::RgbImage rgb = decode_file("rgb.png");
  CHECK(img::resize_bicubic(rgb, rgb.width, rgb.height).rgb == rgb.rgb);
}

TEST_CASE("clip_preprocess writes (x / 255 - mean) / std as [3, H, W] in f32") {
  img::RgbImage two;
  two.width = 2;
  two.height = 1;
  two.rgb = {0, 128, 255, 10, 20, 30};
  img::ClipPreprocess params;
  params.do_resize = false;
  params.do_center_crop = false;
  std::vector<float> out(6);
  REQUIRE(img::clip_preprocess(two, params, out).is_ok());
  for (int c = 0; c < 3; ++c)
    for (int x = 0; x < 2; ++x) {
      const float scaled = float(double(two.rgb[std::size_t(x * 3 + c)]) / 255.0);
      const double expected = (double(scaled) - params.mean[std::size_t(c)]) / params.std[std::size_t(c)];
      CHECK(out[std::size_t(c * 2 + x)] == doctest::Approx(expected).epsilon(1e-6));
    }
  CHECK(out[0] == doctest::Approx(-0.48145466 / 0.26862954).epsilon(1e-6));

  std::vector<float> wrong(5);
  const hostrun::Status size = img::clip_preprocess(two, params, wrong);
  CHECK(size.code() == hostrun::ErrorCode::invalid_argument);
  CHECK(size.message() == "clip_preprocess: the output holds 5 values, the image needs 3 x 1 x 2");
  params.std[1] = 0.0f;
  CHECK(img::clip_preprocess(two, params, out).message() == "clip_preprocess: image_std has a zero");
  img::ClipPreprocess bad_size;
  bad_size.shortest_edge = 0;
  CHECK(img::clip_preprocess(two, bad_size, out).code() == hostrun::ErrorCode::invalid_argument);
}

TEST_CASE("oversized canvases are refused before their pixels are allocated") {
  const auto huge = img::decode_image(read_file(kDir + "/huge.png"));
  REQUIRE_FALSE(huge.has_value());
  CHECK(huge.status().message() ==
        "PNG image of 100000 x 100000 pixels is larger than allowed (50000000 pixels, 32768 a side)");
  img::DecodeLimits small;
  small.max_pixels = 1000;
  for (const char* name : {"rgb.png", "rgb420.jpg", "lossy.webp", "rgb.gif"}) {
    CAPTURE(name);
    const auto refused = img::decode_image(read_file(kDir + "/" + name), small);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.status().message().find("97 x 61 pixels is larger than allowed (1000 pixels") != std::string::npos);
  }
}

TEST_CASE("truncated and corrupted images are refused, never a crash") {
  for (const char* name : kSources) {
    CAPTURE(name);
    const std::vector<std::uint8_t> bytes = read_file(kDir + "/" + name);
    // Cut anywhere in the header or the data.
    for (std::size_t cut : {std::size_t(1), std::size_t(9), std::size_t(30), bytes.size() / 2, bytes.size() - 3}) {
      const std::vector<std::uint8_t> head(bytes.begin(), bytes.begin() + std::ptrdiff_t(std::min(cut, bytes.size())));
      const auto decoded = img::decode_image(head);
      if (!decoded.has_value()) {
        CHECK(decoded.status().code() == hostrun::ErrorCode::invalid_argument);
        CHECK_FALSE(decoded.status().message().empty());
      }
    }
    // Flipped bytes: any outcome but a crash (the sanitizer build runs this too).
    std::mt19937 rng(1234);
    for (int trial = 0; trial < 60; ++trial) {
      std::vector<std::uint8_t> noisy = bytes;
      for (int flips = 0; flips < 4; ++flips) noisy[rng() % noisy.size()] ^= std::uint8_t(1u << (rng() % 8));
      const auto decoded = img::decode_image(noisy);
      if (decoded.has_value()) {
        CHECK(decoded->rgb.size() == std::size_t(decoded->width) * decoded->height * 3);
      } else {
        CHECK(decoded.status().code() == hostrun::ErrorCode::invalid_argument);
      }
    }
  }
  // The signature alone, and a truncated PNG stops with the decoder's reason.
  const std::vector<std::uint8_t> png = read_file(kDir + "/rgb.png");
  const auto cut = img::decode_image(std::vector<std::uint8_t>(png.begin(), png.begin() + 100));
  REQUIRE_FALSE(cut.has_value());
  CHECK(cut.status().message().rfind("bad PNG image: ", 0) == 0);
  const std::vector<std::uint8_t> jpeg = read_file(kDir + "/rgb420.jpg");
  const auto jcut = img::decode_image(std::vector<std::uint8_t>(jpeg.begin(), jpeg.begin() + std::ptrdiff_t(jpeg.size() / 2)));
  REQUIRE_FALSE(jcut.has_value());
  CHECK(jcut.status().message() == "bad JPEG image: the file ends early (truncated)");
}

namespace {

// A model folder holding only small files (what read_clip_preprocess reads).
class FilesOnly : public hostrun::WeightSource {
 public:
  FilesOnly(std::initializer_list<std::pair<const std::string, std::string>> files) : files_(files) {}
  std::string directory() const noexcept override { return "/models/llava"; }
  std::string config_json() const noexcept override { return "{}"; }
  std::vector<std::string> tensor_names() const noexcept override { return {}; }
  hostrun::Result<hostrun::TensorView> tensor(std::string_view name) const noexcept override {
    return hostrun::Status(hostrun::ErrorCode::not_found, std::string(name));
  }
  hostrun::Result<std::string> read_file(std::string_view name) const noexcept override {
    const auto it = files_.find(std::string(name));
    if (it == files_.end()) return hostrun::Status(hostrun::ErrorCode::not_found, std::string(name));
    return it->second;
  }

 private:
  std::map<std::string, std::string> files_;
};

// llava-hf's and xtuner's -transformers folders (transformers 4).
constexpr const char* kTransformers4 = R"({
  "crop_size": {"height": 336, "width": 336}, "do_center_crop": true, "do_convert_rgb": true,
  "do_normalize": true, "do_rescale": true, "do_resize": true,
  "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
  "image_std": [0.26862954, 0.26130258, 0.27577711], "processor_class": "LlavaProcessor",
  "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}})";

}  // namespace

TEST_CASE("processor configs: transformers 4 and 5 layouts, old integer sizes, LLaVA's pad") {
  const auto four = img::parse_clip_preprocess(kTransformers4, "preprocessor_config.json");
  REQUIRE_MESSAGE(four.has_value(), four.status().message());
  CHECK(four->shortest_edge == 336);
  CHECK(four->crop_width == 336);
  CHECK(four->crop_height == 336);
  CHECK_FALSE(four->pad_to_square);
  CHECK(four->mean[1] == 0.4578275f);
  CHECK(four->std[2] == 0.27577711f);

  const std::string five = std::string(R"({"image_processor": )") +
                           R"({"do_pad": true, "size": {"shortest_edge": 224}, "crop_size": {"height": 200, "width": 190},
                               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3},
                             "patch_size": 14, "processor_class": "LlavaProcessor"})";
  const auto nested = img::parse_clip_preprocess(five, "processor_config.json");
  REQUIRE_MESSAGE(nested.has_value(), nested.status().message());
  CHECK(nested->pad_to_square);
  CHECK(nested->shortest_edge == 224);
  CHECK(nested->crop_height == 200);
  CHECK(nested->crop_width == 190);
  CHECK(img::mean_color(nested.value()) == std::array<std::uint8_t, 3>{127, 127, 127});

  const auto old = img::parse_clip_preprocess(R"({"size": 224, "crop_size": 224})", "old.json");
  REQUIRE(old.has_value());
  CHECK(old->shortest_edge == 224);
  CHECK(old->crop_width == 224);
  CHECK(old->mean == img::ClipPreprocess{}.mean);

  const auto message = [](const char* text) { return img::parse_clip_preprocess(text, "p.json").status().message(); };
  CHECK(message(R"({"resample": 2})") == "p.json: \"resample\" is 2; only 3 (PIL's BICUBIC, what CLIP and LLaVA use) is supported");
  CHECK(message(R"({"size": {"height": 336, "width": 336}})") ==
        "p.json: \"size\" must name \"shortest_edge\" (CLIP's resize), found {\"height\":336,\"width\":336}");
  CHECK(message(R"({"crop_size": 0})") == "p.json: \"crop_size\" must be a whole number of pixels from 1 to 8192, found 0");
  CHECK(message(R"({"image_std": [0.5, 0, 0.5]})") == "p.json: \"image_std\" must be three positive numbers");
  CHECK(message(R"({"image_mean": [0.5, 0.5]})") == "p.json: \"image_mean\" must be three numbers (R, G, B), found [0.5,0.5]");
  CHECK(message(R"({"do_pad": "yes"})") == "p.json: \"do_pad\" must be true or false, found \"yes\"");
  CHECK(message(R"({"do_convert_rgb": false})") ==
        "p.json: \"do_convert_rgb\" false is not supported (images are always converted to RGB)");
  CHECK(message("[1, 2]") == "p.json: expected a JSON object");
  CHECK(message("{") .rfind("p.json is not valid JSON", 0) == 0);
}

TEST_CASE("read_clip_preprocess: preprocessor_config.json first, then processor_config.json") {
  const FilesOnly four({{"preprocessor_config.json", kTransformers4}, {"processor_config.json", R"({"image_processor": {"size": 100}})"}});
  CHECK(img::read_clip_preprocess(four)->shortest_edge == 336);
  const FilesOnly five({{"processor_config.json", R"({"image_processor": {"size": 100}})"}});
  CHECK(img::read_clip_preprocess(five)->shortest_edge == 100);
  const FilesOnly none{};
  const auto missing = img::read_clip_preprocess(none);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.status().code() == hostrun::ErrorCode::not_found);
  CHECK(missing.status().message() ==
        "/models/llava has neither preprocessor_config.json nor processor_config.json (the image processor's sizes "
        "and statistics)");
  const FilesOnly broken({{"preprocessor_config.json", R"({"resample": 0})"}});
  CHECK(img::read_clip_preprocess(broken).status().message().rfind("/models/llava/preprocessor_config.json: \"resample\" is 0", 0) == 0);
}
