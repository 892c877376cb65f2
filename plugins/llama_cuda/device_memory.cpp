#include "device_memory.hpp"

#include <fmt/format.h>

#include "errors.hpp"

namespace hostrun::llama_cuda {

void DeviceBuffer::allocate(size_t bytes, const char* what) {
  reset();
  if (bytes == 0) return;
  void* p = nullptr;
  if (cudaError_t e = cudaMalloc(&p, bytes); e != cudaSuccess) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    fail(ErrorCode::out_of_memory, fmt::format("cannot allocate {} MiB for {}: {} MiB free of {} MiB on the GPU ({})",
                                               bytes >> 20, what, free_bytes >> 20, total_bytes >> 20,
                                               cudaGetErrorString(e)));
  }
  data_ = static_cast<std::byte*>(p);
  bytes_ = bytes;
}

void DeviceBuffer::reset() {
  if (data_) cudaFree(data_);
  data_ = nullptr;
  bytes_ = 0;
}

void PinnedBuffer::allocate(size_t bytes, const char* what) {
  reset();
  if (bytes == 0) return;
  void* p = nullptr;
  if (cudaError_t e = cudaMallocHost(&p, bytes); e != cudaSuccess) {
    cudaGetLastError();
    fail(ErrorCode::out_of_memory,
         fmt::format("cannot allocate {} MiB of pinned host memory for {} ({})", bytes >> 20, what, cudaGetErrorString(e)));
  }
  data_ = static_cast<std::byte*>(p);
  bytes_ = bytes;
}

void PinnedBuffer::reset() {
  if (data_) cudaFreeHost(data_);
  data_ = nullptr;
  bytes_ = 0;
}

EmbeddingPool::~EmbeddingPool() {
  for (auto& kept : kept_)
    if (kept->released != nullptr) cudaEventDestroy(kept->released);
}

void EmbeddingPool::take(size_t bytes, DeviceBuffer& out) {
  {
    std::lock_guard lock(mutex_);
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if ((*it)->buffer.bytes() != bytes || cudaEventQuery((*it)->released) != cudaSuccess) continue;
      out.swap((*it)->buffer);
      cudaEventDestroy((*it)->released);
      kept_.erase(it);
      return;
    }
  }
  cudaGetLastError();  // cudaEventQuery's cudaErrorNotReady is not an error
  out.allocate(bytes, "embedding rows");
}

void EmbeddingPool::give_back(DeviceBuffer& buffer) {
  if (buffer.data() == nullptr) return;
  std::lock_guard lock(mutex_);
  auto kept = std::make_unique<Kept>();
  if (kept_.size() >= kKept || cudaSetDevice(device_) != cudaSuccess ||
      cudaEventCreateWithFlags(&kept->released, cudaEventDisableTiming) != cudaSuccess ||
      cudaEventRecord(kept->released, stream_) != cudaSuccess) {
    if (kept->released != nullptr) cudaEventDestroy(kept->released);
    cudaGetLastError();
    buffer.reset();  // cudaFree: rare (a full pool), and always correct
    return;
  }
  kept->buffer.swap(buffer);
  kept_.push_back(std::move(kept));
}

EmbeddingRows::EmbeddingRows(std::shared_ptr<EmbeddingPool> pool, int64_t rows, int64_t hidden, DType dtype,
                             Device device)
    : pool_(std::move(pool)), rows_(rows), hidden_(hidden), dtype_(dtype), device_(device) {
  check_cuda(cudaSetDevice(device.index), "cudaSetDevice");
  pool_->take(size_t(rows) * size_t(hidden) * (dtype_bits(dtype) / 8), memory_);
}

EmbeddingRows::~EmbeddingRows() { pool_->give_back(memory_); }

TensorView EmbeddingRows::view() const noexcept {
  return TensorView::contiguous(memory_.data(), dtype_, {rows_, hidden_}, device_);
}

}  // namespace hostrun::llama_cuda
