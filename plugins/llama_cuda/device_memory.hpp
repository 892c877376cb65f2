// Owners of CUDA resources llama_cuda holds: device and pinned host memory,
// instantiated graphs, and the embedding rows it hands the engine.
#pragma once

#include <cuda_runtime_api.h>
#include <hostrun/model.hpp>

#include <cstddef>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

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

// Embedding memory a request gives back when it ends, kept for the next
// image request instead of cudaFree'd: cudaFree waits for the whole device,
// which held the engine's thread behind the step in flight once per finished
// image request. A buffer is handed out again only once the model's stream
// has passed the point where it came back (its event), so a step still
// reading it is never overwritten; at most kKept are kept.
class EmbeddingPool {
 public:
  EmbeddingPool(cudaStream_t stream, int device) : stream_(stream), device_(device) {}
  ~EmbeddingPool();
  EmbeddingPool(const EmbeddingPool&) = delete;
  EmbeddingPool& operator=(const EmbeddingPool&) = delete;
  void take(size_t bytes, DeviceBuffer& out);  // a kept buffer of that size that is free again, or a new one
  void give_back(DeviceBuffer& buffer);        // leaves `buffer` empty

 private:
  static constexpr size_t kKept = 64;
  struct Kept {
    DeviceBuffer buffer;
    cudaEvent_t released = nullptr;
  };
  cudaStream_t stream_;
  int device_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Kept>> kept_;
};

// Model::allocate_embeddings: [rows, hidden] in the activation dtype on the
// model's GPU, owned by the engine through a PluginPtr; its memory comes from
// and goes back to the model's EmbeddingPool (which it keeps alive).
class EmbeddingRows final : public DeviceTensor {
 public:
  EmbeddingRows(std::shared_ptr<EmbeddingPool> pool, int64_t rows, int64_t hidden, DType dtype, Device device);
  ~EmbeddingRows() override;
  TensorView view() const noexcept override;

 private:
  std::shared_ptr<EmbeddingPool> pool_;
  DeviceBuffer memory_;
  int64_t rows_;
  int64_t hidden_;
  DType dtype_;
  Device device_;
};

}  // namespace hostrun::llama_cuda
