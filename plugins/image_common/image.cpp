#include "image_common/image.hpp"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <utility>

#include <fmt/format.h>
#include <gif_lib.h>
#include <jpeglib.h>
#include <jerror.h>  // after jpeglib.h: the message codes (JWRN_JPEG_EOF)
#include <png.h>
#include <webp/decode.h>

namespace hostrun::image {

const char* to_string(ImageFormat format) noexcept {
  switch (format) {
    case ImageFormat::png: return "PNG";
    case ImageFormat::jpeg: return "JPEG";
    case ImageFormat::webp: return "WebP";
    case ImageFormat::gif: return "GIF";
  }
  return "?";
}

const char* mime_type(ImageFormat format) noexcept {
  switch (format) {
    case ImageFormat::png: return "image/png";
    case ImageFormat::jpeg: return "image/jpeg";
    case ImageFormat::webp: return "image/webp";
    case ImageFormat::gif: return "image/gif";
  }
  return "application/octet-stream";
}

Result<ImageData> image_data(std::vector<std::uint8_t> bytes) {
  const Result<ImageFormat> format = sniff_image_format(bytes);
  if (!format) return format.status();
  return ImageData{mime_type(format.value()), std::move(bytes)};
}

Result<ImageFormat> sniff_image_format(std::span<const std::uint8_t> bytes) {
  const auto starts = [&](std::size_t at, std::string_view magic) {
    return bytes.size() >= at + magic.size() && std::memcmp(bytes.data() + at, magic.data(), magic.size()) == 0;
  };
  if (starts(0, "\x89PNG\r\n\x1a\n")) return ImageFormat::png;
  if (starts(0, "\xff\xd8\xff")) return ImageFormat::jpeg;
  if (starts(0, "RIFF") && starts(8, "WEBP")) return ImageFormat::webp;
  if (starts(0, "GIF87a") || starts(0, "GIF89a")) return ImageFormat::gif;
  if (bytes.empty()) return Status(ErrorCode::invalid_argument, "the image is empty (0 bytes)");
  std::string head;
  for (std::size_t i = 0; i < std::min<std::size_t>(bytes.size(), 8); ++i) head += fmt::format("{:02x}", bytes[i]);
  return Status(ErrorCode::invalid_argument,
                fmt::format("not a PNG, JPEG, WebP or GIF image (first bytes {})", head));
}

namespace {

Status bad(ImageFormat format, std::string_view why) {
  return Status(ErrorCode::invalid_argument, fmt::format("bad {} image: {}", to_string(format), why));
}

// The canvas a header declares, checked before anything is allocated.
Status check_size(ImageFormat format, std::int64_t width, std::int64_t height, const DecodeLimits& limits) {
  if (width <= 0 || height <= 0) return bad(format, fmt::format("{} x {} pixels", width, height));
  if (width > limits.max_side || height > limits.max_side || width * height > limits.max_pixels)
    return Status(ErrorCode::invalid_argument,
                  fmt::format("{} image of {} x {} pixels is larger than allowed ({} pixels, {} a side)",
                              to_string(format), width, height, limits.max_pixels, limits.max_side));
  return Status();
}

// ---- PNG (libpng) ---------------------------------------------------------

struct PngInput {
  std::span<const std::uint8_t> bytes;
  std::size_t at = 0;
  char error[200] = {};
};

void png_read_memory(png_structp png, png_bytep out, png_size_t count) {
  auto* in = static_cast<PngInput*>(png_get_io_ptr(png));
  if (count > in->bytes.size() - in->at) png_error(png, "the file ends early");
  std::memcpy(out, in->bytes.data() + in->at, count);
  in->at += count;
}

void png_on_error(png_structp png, png_const_charp message) {
  auto* in = static_cast<PngInput*>(png_get_error_ptr(png));
  std::snprintf(in->error, sizeof in->error, "%s", message);
  png_longjmp(png, 1);
}
void png_on_warning(png_structp, png_const_charp) {}

// What png_decode_rows fills, owned by its caller: locals changed after a
// setjmp are indeterminate after the longjmp back to it.
struct PngBuffers {
  RgbImage out;
  std::vector<png_bytep> rows;
  std::vector<std::uint8_t> wide;  // 16-bit grey rows
};

// libpng reports errors by longjmp to the setjmp here.
bool png_decode_rows(PngInput& in, const DecodeLimits& limits, PngBuffers& buffers, Status& status) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &in, png_on_error, png_on_warning);
  if (png == nullptr) {
    status = Status(ErrorCode::out_of_memory, "libpng could not start");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  RgbImage& out = buffers.out;
  std::vector<png_bytep>& rows = buffers.rows;
  std::vector<std::uint8_t>& wide = buffers.wide;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    status = bad(ImageFormat::png, in.error);
    return false;
  }
  if (info == nullptr) png_error(png, "out of memory");
  png_set_read_fn(png, &in, png_read_memory);
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_read_info(png, info);
  const png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
  if (Status s = check_size(ImageFormat::png, width, height, limits); !s) {
    png_destroy_read_struct(&png, &info, nullptr);
    status = s;
    return false;
  }
  const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
  // PIL opens 16-bit grey as mode "I" and convert("RGB") clips it at 255;
  // every other 16-bit layout keeps its high byte.
  const bool grey16 = color == PNG_COLOR_TYPE_GRAY && depth == 16;
  if (!grey16) {
    png_set_strip_16(png);
    png_set_expand(png);  // palettes to RGB, 1/2/4-bit grey to 8 (x 255 / (2^b - 1)), tRNS to alpha
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  out = RgbImage::black(int(width), int(height));
  rows.resize(height);
  if (grey16) {
    wide.resize(std::size_t(width) * height * 2);
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = wide.data() + std::size_t(y) * width * 2;
  } else {
    if (png_get_rowbytes(png, info) != std::size_t(width) * 3) png_error(png, "unexpected row layout after conversion");
    for (png_uint_32 y = 0; y < height; ++y) rows[y] = out.rgb.data() + std::size_t(y) * width * 3;
  }
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  if (grey16)
    for (std::size_t i = 0; i < std::size_t(width) * height; ++i) {
      const unsigned v = unsigned(wide[2 * i]) << 8 | wide[2 * i + 1];
      out.rgb[3 * i] = out.rgb[3 * i + 1] = out.rgb[3 * i + 2] = std::uint8_t(std::min(v, 255u));
    }
  return true;
}

Result<RgbImage> decode_png(std::span<const std::uint8_t> bytes, const DecodeLimits& limits) {
  PngInput in{bytes};
  PngBuffers buffers;
  Status status;
  if (!png_decode_rows(in, limits, buffers, status)) return status;
  return std::move(buffers.out);
}

// ---- JPEG (libjpeg-turbo) -------------------------------------------------

struct JpegErrors {
  jpeg_error_mgr base;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX] = {};
  bool truncated = false;
};

void jpeg_on_error(j_common_ptr cinfo) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, errors->message);
  std::longjmp(errors->jump, 1);
}

// Warnings are decoded past, as PIL does, except a file that ends early
// (PIL refuses truncated images unless told otherwise).
void jpeg_on_message(j_common_ptr cinfo, int level) {
  auto* errors = reinterpret_cast<JpegErrors*>(cinfo->err);
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) errors->truncated = true;
}

// PIL's cmyk2rgb on Adobe's inverted samples (PIL assumes Adobe's convention
// for every CMYK JPEG).
std::uint8_t cmyk_channel(unsigned inverted, unsigned inverted_k) {
  const int c = 255 - int(inverted), nk = int(inverted_k);  // nk = 255 - k
  int t = c * nk + 128;
  t = ((t >> 8) + t) >> 8;
  return std::uint8_t(std::clamp(nk - t, 0, 255));
}

bool jpeg_decode_rows(std::span<const std::uint8_t> bytes, const DecodeLimits& limits, RgbImage& out,
                      std::vector<std::uint8_t>& row, Status& status) {
  jpeg_decompress_struct cinfo;
  JpegErrors errors;
  cinfo.err = jpeg_std_error(&errors.base);
  errors.base.error_exit = jpeg_on_error;
  errors.base.emit_message = jpeg_on_message;
  if (setjmp(errors.jump)) {
    jpeg_destroy_decompress(&cinfo);
    status = bad(ImageFormat::jpeg, errors.message);
    return false;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, bytes.data(), static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (Status s = check_size(ImageFormat::jpeg, cinfo.image_width, cinfo.image_height, limits); !s) {
    jpeg_destroy_decompress(&cinfo);
    status = s;
    return false;
  }
  const bool grey = cinfo.jpeg_color_space == JCS_GRAYSCALE;
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = grey ? JCS_GRAYSCALE : cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  const int width = int(cinfo.output_width), channels = cinfo.output_components;
  out = RgbImage::black(width, int(cinfo.output_height));
  row.resize(std::size_t(width) * std::size_t(channels));
  while (cinfo.output_scanline < cinfo.output_height) {
    const int y = int(cinfo.output_scanline);
    JSAMPROW rows[1] = {channels == 3 ? out.pixel(0, y) : row.data()};
    jpeg_read_scanlines(&cinfo, rows, 1);
    if (channels == 1) {
      for (int x = 0; x < width; ++x) std::fill_n(out.pixel(x, y), 3, row[std::size_t(x)]);
    } else if (channels == 4) {
      for (int x = 0; x < width; ++x) {
        const std::uint8_t* p = row.data() + std::size_t(x) * 4;
        for (int c = 0; c < 3; ++c) out.pixel(x, y)[c] = cmyk_channel(p[c], p[3]);
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (errors.truncated) {
    status = bad(ImageFormat::jpeg, "the file ends early (truncated)");
    return false;
  }
  return true;
}

Result<RgbImage> decode_jpeg(std::span<const std::uint8_t> bytes, const DecodeLimits& limits) {
  RgbImage out;
  std::vector<std::uint8_t> row;
  Status status;
  if (!jpeg_decode_rows(bytes, limits, out, row, status)) return status;
  return out;
}

// ---- WebP (libwebp) -------------------------------------------------------

Result<RgbImage> decode_webp(std::span<const std::uint8_t> bytes, const DecodeLimits& limits) {
  WebPBitstreamFeatures features;
  if (WebPGetFeatures(bytes.data(), bytes.size(), &features) != VP8_STATUS_OK)
    return bad(ImageFormat::webp, "the header could not be read");
  if (features.has_animation)
    return Status(ErrorCode::invalid_argument, "animated WebP images are not supported; send a still image");
  if (Status s = check_size(ImageFormat::webp, features.width, features.height, limits); !s) return s;
  RgbImage out = RgbImage::black(features.width, features.height);
  // RGB straight from the decoder: alpha, if any, is dropped, not blended.
  if (WebPDecodeRGBInto(bytes.data(), bytes.size(), out.rgb.data(), out.rgb.size(), out.width * 3) == nullptr)
    return bad(ImageFormat::webp, "the image data could not be decoded");
  return out;
}

// ---- GIF (giflib): the first frame ------------------------------------------

struct GifInput {
  std::span<const std::uint8_t> bytes;
  std::size_t at = 0;
};

int gif_read_memory(GifFileType* gif, GifByteType* out, int count) {
  auto* in = static_cast<GifInput*>(gif->UserData);
  const std::size_t n = std::min(std::size_t(std::max(count, 0)), in->bytes.size() - in->at);
  std::memcpy(out, in->bytes.data() + in->at, n);
  in->at += n;
  return int(n);
}

struct GifCloser {
  GifFileType* gif;
  ~GifCloser() {
    int error = 0;
    if (gif != nullptr) DGifCloseFile(gif, &error);
  }
};

Result<RgbImage> decode_gif(std::span<const std::uint8_t> bytes, const DecodeLimits& limits) {
  GifInput in{bytes};
  int error = 0;
  GifCloser file{DGifOpen(&in, gif_read_memory, &error)};
  GifFileType* gif = file.gif;
  if (gif == nullptr) return bad(ImageFormat::gif, GifErrorString(error));
  const auto gif_error = [&] { return bad(ImageFormat::gif, gif->Error ? GifErrorString(gif->Error) : "unreadable"); };
  if (Status s = check_size(ImageFormat::gif, gif->SWidth, gif->SHeight, limits); !s) return s;
  GifRecordType record;
  do {
    if (DGifGetRecordType(gif, &record) == GIF_ERROR) return gif_error();
    if (record == EXTENSION_RECORD_TYPE) {
      int code = 0;
      GifByteType* block = nullptr;
      if (DGifGetExtension(gif, &code, &block) == GIF_ERROR) return gif_error();
      while (block != nullptr)
        if (DGifGetExtensionNext(gif, &block) == GIF_ERROR) return gif_error();
    }
  } while (record != IMAGE_DESC_RECORD_TYPE && record != TERMINATE_RECORD_TYPE);
  if (record != IMAGE_DESC_RECORD_TYPE) return bad(ImageFormat::gif, "the file holds no image");
  if (DGifGetImageDesc(gif) == GIF_ERROR) return gif_error();
  const GifImageDesc& frame = gif->Image;
  const ColorMapObject* palette = frame.ColorMap != nullptr ? frame.ColorMap : gif->SColorMap;
  if (palette == nullptr) return bad(ImageFormat::gif, "no color table");
  const std::int64_t left = frame.Left, top = frame.Top, fw = frame.Width, fh = frame.Height;
  if (fw <= 0 || fh <= 0 || left < 0 || top < 0 || left + fw > gif->SWidth || top + fh > gif->SHeight)
    return bad(ImageFormat::gif, fmt::format("the first frame ({} x {} at {}, {}) is outside the {} x {} canvas", fw,
                                             fh, left, top, gif->SWidth, gif->SHeight));
  std::vector<GifPixelType> indices(std::size_t(gif->SWidth) * std::size_t(gif->SHeight),
                                    GifPixelType(gif->SBackGroundColor));
  // Interlaced frames store rows in four passes.
  const int starts[4] = {0, 4, 2, 1}, steps[4] = {8, 8, 4, 2};
  const int passes = frame.Interlace ? 4 : 1;
  for (int pass = 0; pass < passes; ++pass)
    for (std::int64_t y = frame.Interlace ? starts[pass] : 0; y < fh; y += frame.Interlace ? steps[pass] : 1)
      if (DGifGetLine(gif, indices.data() + std::size_t(top + y) * std::size_t(gif->SWidth) + std::size_t(left),
                      int(fw)) == GIF_ERROR)
        return gif_error();
  RgbImage out = RgbImage::black(gif->SWidth, gif->SHeight);
  for (std::size_t i = 0; i < indices.size(); ++i) {
    if (indices[i] >= palette->ColorCount) continue;  // past the table: black
    const GifColorType& color = palette->Colors[indices[i]];
    out.rgb[3 * i] = color.Red;
    out.rgb[3 * i + 1] = color.Green;
    out.rgb[3 * i + 2] = color.Blue;
  }
  return out;
}

}  // namespace

Result<RgbImage> decode_image(std::span<const std::uint8_t> bytes, const DecodeLimits& limits) {
  const Result<ImageFormat> format = sniff_image_format(bytes);
  if (!format) return format.status();
  return guard_result<RgbImage>([&]() -> Result<RgbImage> {
    switch (format.value()) {
      case ImageFormat::png: return decode_png(bytes, limits);
      case ImageFormat::jpeg: return decode_jpeg(bytes, limits);
      case ImageFormat::webp: return decode_webp(bytes, limits);
      case ImageFormat::gif: return decode_gif(bytes, limits);
    }
    return Status(ErrorCode::internal, "unknown image format");
  });
}

}  // namespace hostrun::image
