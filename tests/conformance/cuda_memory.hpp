// GPU memory for the conformance suites' GPU executables (label gpu).
#pragma once

#include <cuda_runtime_api.h>

#include <doctest/doctest.h>

#include "device_memory.hpp"

namespace conformance {

inline void check_cuda(cudaError_t error, const char* what) {
  REQUIRE_MESSAGE(error == cudaSuccess, what << ": " << cudaGetErrorString(error) << " (" << cudaGetErrorName(error) << ")");
}

// GPU 0, with a stream of its own (policies may fork from it and join back).
class CudaMemory final : public DeviceMemory {
 public:
  CudaMemory() {
    check_cuda(cudaSetDevice(0), "cudaSetDevice(0)");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  }
  ~CudaMemory() override { cudaStreamDestroy(stream_); }
  hostrun::Device device() const override { return hostrun::Device{hostrun::DeviceKind::cuda, 0}; }
  void* stream() const override { return stream_; }
  void* allocate(size_t bytes) override {
    void* memory = nullptr;
    check_cuda(cudaMalloc(&memory, bytes), "cudaMalloc");
    return memory;
  }
  void release(void* memory) noexcept override { cudaFree(memory); }
  void upload(void* device_memory, const void* host, size_t bytes) override {
    check_cuda(cudaMemcpyAsync(device_memory, host, bytes, cudaMemcpyHostToDevice, stream_), "upload");
    synchronize();
  }
  void download(void* host, const void* device_memory, size_t bytes) override {
    check_cuda(cudaMemcpyAsync(host, device_memory, bytes, cudaMemcpyDeviceToHost, stream_), "download");
    synchronize();
  }
  void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace conformance
