// Owners of CUDA resources llama_cuda holds: device and pinned host memory,
// instantiated graphs, and the embedding rows it hands the engine.
#pragma once

#include <cuda_runtime_api.h>
#include <hostrun/model.hpp>

#include <cstddef>
#include <utility>

namespace hostrun::llama_cuda {

// cudaMalloc'd memory, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void allocate(size_t bytes, const char* what);  // throws Error naming `what` and the free memory
  void reset();
  void swap(DeviceBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(bytes_, other.bytes_);
  }
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

// cudaMallocHost'd memory (staging for uploads and read-backs).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() { reset(); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void allocate(size_t bytes, const char* what);
  void reset();
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
};

// An instantiated CUDA graph, destroyed with its owner.
class GraphExec {
 public:
  explicit GraphExec(cudaGraphExec_t exec) : exec_(exec) {}
  ~GraphExec() {
    if (exec_) cudaGraphExecDestroy(exec_);
  }
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;
  cudaGraphExec_t get() const { return exec_; }

 private:
  cudaGraphExec_t exec_ = nullptr;
};

// Model::allocate_embeddings: [rows, hidden] in the activation dtype on the
// model's GPU, owned by the engine through a PluginPtr.
class EmbeddingRows final : public DeviceTensor {
 public:
  EmbeddingRows(int64_t rows, int64_t hidden, DType dtype, Device device);
  TensorView view() const noexcept override;

 private:
  DeviceBuffer memory_;
  int64_t rows_;
  int64_t hidden_;
  DType dtype_;
  Device device_;
};

}  // namespace hostrun::llama_cuda
