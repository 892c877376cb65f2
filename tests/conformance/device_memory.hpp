// Memory on the device a plugin under test runs on, for the conformance
// suites: the suites put inputs there, run the plugin, and read the results
// back to compare with a reference computed on the host. HostMemory serves
// CPU plugins; cuda_memory.hpp's CudaMemory serves GPU ones.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <new>
#include <utility>
#include <vector>

#include "hostrun/tensor.hpp"
#include "support.hpp"

namespace conformance {

class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual hostrun::Device device() const = 0;
  virtual void* stream() const = 0;  // ExecContext::stream
  virtual void* allocate(size_t bytes) = 0;
  virtual void release(void* memory) noexcept = 0;
  virtual void upload(void* device_memory, const void* host, size_t bytes) = 0;
  virtual void download(void* host, const void* device_memory, size_t bytes) = 0;
  // Waits for everything enqueued on stream().
  virtual void synchronize() = 0;
};

// Host memory; work is done by the time a call returns.
class HostMemory final : public DeviceMemory {
 public:
  hostrun::Device device() const override { return hostrun::Device{hostrun::DeviceKind::cpu, 0}; }
  void* stream() const override { return nullptr; }
  void* allocate(size_t bytes) override { return ::operator new(bytes, std::align_val_t{256}); }
  void release(void* memory) noexcept override { ::operator delete(memory, std::align_val_t{256}); }
  void upload(void* device_memory, const void* host, size_t bytes) override { std::memcpy(device_memory, host, bytes); }
  void download(void* host, const void* device_memory, size_t bytes) override { std::memcpy(host, device_memory, bytes); }
  void synchronize() override {}
};

// Owned device memory.
class DeviceBuffer {
 public:
  DeviceBuffer(DeviceMemory& memory, size_t bytes) : memory_(&memory), bytes_(bytes) {
    data_ = memory.allocate(std::max<size_t>(bytes, 1));
  }
  ~DeviceBuffer() {
    if (data_) memory_->release(data_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : memory_(other.memory_), data_(std::exchange(other.data_, nullptr)), bytes_(other.bytes_) {}
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(DeviceBuffer&&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }

 private:
  DeviceMemory* memory_;
  void* data_ = nullptr;
  size_t bytes_;
};

// A device buffer of `dtype` elements and its host image, NaN until rows are
// put in (a plugin that reads an element it was not given poisons its
// output): rows go into the image, the image goes up, and comes back after
// the plugin ran.
class Staging {
 public:
  Staging(DeviceMemory& memory, hostrun::DType dtype, size_t elements)
      : memory_(memory), dtype_(dtype), image_(elements * hostrun::dtype_bits(dtype) / 8), buffer_(memory, image_.size()) {
    const std::vector<float> nan(elements, std::numeric_limits<float>::quiet_NaN());
    hostrun::ref::convert_from_f32(nan.data(), elements, image_.data(), ref_dtype(dtype));
  }
  // Rows of `row_elements` packed values into the image at `offset`, `row_stride` apart.
  void put(size_t offset, int64_t rows, int64_t row_stride, int64_t row_elements, const std::vector<float>& packed) {
    for (int64_t r = 0; r < rows; ++r)
      hostrun::ref::convert_from_f32(packed.data() + r * row_elements, size_t(row_elements),
                                     element(offset + size_t(r * row_stride)), ref_dtype(dtype_));
  }
  std::vector<float> get(size_t offset, int64_t rows, int64_t row_stride, int64_t row_elements) const {
    std::vector<float> packed(size_t(rows * row_elements));
    for (int64_t r = 0; r < rows; ++r)
      hostrun::ref::convert_to_f32(element(offset + size_t(r * row_stride)), ref_dtype(dtype_), size_t(row_elements),
                                   packed.data() + r * row_elements);
    return packed;
  }
  // The bytes of each row's `padding` elements after `row_elements` (what a plugin must not touch).
  std::vector<std::byte> padding(int64_t rows, int64_t row_stride, int64_t row_elements) const {
    std::vector<std::byte> bytes;
    const size_t element_bytes = hostrun::dtype_bits(dtype_) / 8;
    for (int64_t r = 0; r < rows; ++r) {
      const std::byte* first = element(size_t(r * row_stride + row_elements));
      bytes.insert(bytes.end(), first, first + size_t(row_stride - row_elements) * element_bytes);
    }
    return bytes;
  }
  void upload() { memory_.upload(buffer_.data(), image_.data(), image_.size()); }
  void download() { memory_.download(image_.data(), buffer_.data(), image_.size()); }
  const std::vector<std::byte>& image() const { return image_; }
  hostrun::DType dtype() const { return dtype_; }
  // A view on the device from element `offset`: `dims` with the first
  // dimension `row_stride` elements apart, the rest packed.
  hostrun::TensorView view(size_t offset, std::initializer_list<int64_t> dims, int64_t row_stride) const {
    hostrun::TensorView v = hostrun::TensorView::contiguous(
        static_cast<std::byte*>(buffer_.data()) + offset * hostrun::dtype_bits(dtype_) / 8, dtype_, dims,
        memory_.device());
    v.strides[0] = row_stride;
    return v;
  }

 private:
  std::byte* element(size_t index) { return image_.data() + index * hostrun::dtype_bits(dtype_) / 8; }
  const std::byte* element(size_t index) const { return image_.data() + index * hostrun::dtype_bits(dtype_) / 8; }

  DeviceMemory& memory_;
  hostrun::DType dtype_;
  std::vector<std::byte> image_;
  DeviceBuffer buffer_;
};

}  // namespace conformance
