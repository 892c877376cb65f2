#include "ref/dtype.hpp"

#include <cstring>

namespace hostrun::ref {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
  }
  return "unknown_dtype";
}

void convert_to_f32(const void* src, DType src_dtype, std::size_t count, float* dst) {
  const auto* src_bits = static_cast<const std::uint16_t*>(src);
  switch (src_dtype) {
    case DType::f32: std::memcpy(dst, src, count * sizeof(float)); return;
    case DType::bf16:
      for (std::size_t i = 0; i < count; ++i) dst[i] = bf16_to_f32(src_bits[i]);
      return;
    case DType::f16:
      for (std::size_t i = 0; i < count; ++i) dst[i] = f16_to_f32(src_bits[i]);
      return;
  }
}

void convert_from_f32(const float* src, std::size_t count, void* dst, DType dst_dtype) {
  auto* dst_bits = static_cast<std::uint16_t*>(dst);
  switch (dst_dtype) {
    case DType::f32: std::memcpy(dst, src, count * sizeof(float)); return;
    case DType::bf16:
      for (std::size_t i = 0; i < count; ++i) dst_bits[i] = f32_to_bf16(src[i]);
      return;
    case DType::f16:
      for (std::size_t i = 0; i < count; ++i) dst_bits[i] = f32_to_f16(src[i]);
      return;
  }
}

}  // namespace hostrun::ref
