// Non-owning views of tensors that cross the plugin boundary.
//
// A TensorView never frees what it points at; whoever made the memory owns it
// and must keep it alive for as long as the view is used. Strides are in
// elements, not bytes, as in PyTorch. A view with packed 4-bit elements
// (int4/uint4) counts elements, two per byte.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace hostrun {

// f8_e4m3 / f8_e5m2: OCP FP8 (safetensors F8_E4M3 / F8_E5M2); e4m3 is the
// "fn" variant (no infinities, 0x7f/0xff NaN), as PyTorch's float8_e4m3fn.
enum class DType : uint8_t { f32, f16, bf16, i32, i64, i8, u8, i4, u4, f8_e4m3, f8_e5m2 };

constexpr size_t kMaxTensorRank = 6;

// Size of one element in bits (4 for the packed integer types).
constexpr unsigned dtype_bits(DType t) noexcept {
  switch (t) {
    case DType::f32: case DType::i32: return 32;
    case DType::f16: case DType::bf16: return 16;
    case DType::i64: return 64;
    case DType::i8: case DType::u8: case DType::f8_e4m3: case DType::f8_e5m2: return 8;
    case DType::i4: case DType::u4: return 4;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) noexcept {
  switch (t) {
    case DType::f32: return "f32";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
    case DType::i8: return "i8";
    case DType::u8: return "u8";
    case DType::i4: return "i4";
    case DType::u4: return "u4";
    case DType::f8_e4m3: return "f8_e4m3";
    case DType::f8_e5m2: return "f8_e5m2";
  }
  return "?";
}

// One bit per dtype, for sets of dtypes (KvFormat::activation_dtypes, ...).
constexpr uint32_t dtype_bit(DType t) noexcept { return 1u << unsigned(t); }

enum class DeviceKind : uint8_t { cpu, cuda };

constexpr std::string_view device_kind_name(DeviceKind kind) noexcept {
  return kind == DeviceKind::cuda ? "cuda" : "cpu";
}

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;
  friend bool operator==(const Device&, const Device&) = default;
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device{};
  uint8_t rank = 0;
  std::array<int64_t, kMaxTensorRank> shape{};
  std::array<int64_t, kMaxTensorRank> strides{};  // in elements

  // A contiguous row-major view.
  static TensorView contiguous(void* data, DType dtype, std::initializer_list<int64_t> dims,
                               Device device = {}) noexcept {
    TensorView v;
    v.data = data;
    v.dtype = dtype;
    v.device = device;
    v.rank = static_cast<uint8_t>(dims.size() < kMaxTensorRank ? dims.size() : kMaxTensorRank);
    uint8_t i = 0;
    for (int64_t d : dims) {
      if (i == v.rank) break;
      v.shape[i++] = d;
    }
    int64_t stride = 1;
    for (int r = int(v.rank) - 1; r >= 0; --r) {
      v.strides[r] = stride;
      stride *= v.shape[r];
    }
    return v;
  }

  int64_t numel() const noexcept {
    int64_t n = 1;
    for (uint8_t r = 0; r < rank; ++r) n *= shape[r];
    return n;
  }
  size_t nbytes() const noexcept { return size_t(numel() * dtype_bits(dtype) + 7) / 8; }
  bool is_contiguous() const noexcept {
    int64_t stride = 1;
    for (int r = int(rank) - 1; r >= 0; --r) {
      if (shape[r] != 1 && strides[r] != stride) return false;
      stride *= shape[r];
    }
    return true;
  }
  template <typename T>
  T* as() const noexcept { return static_cast<T*>(data); }
};

}  // namespace hostrun
