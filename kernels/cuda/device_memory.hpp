// Host-side owners for plugins that keep data on a CUDA device (the
// quantizers' layers): the device made current for a scope, an array
// uploaded once, and one object per device shared by a plugin's layers.
// Failures throw std::runtime_error "<owner>: <doing what>: <CUDA's message>
// (<error name>)", which hostrun::guard turns into an internal error with
// that message.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace hostrun::cuda {

inline void throw_on_error(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess)
    throw std::runtime_error(what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")");
}

// Makes `device` current for the owner's lifetime, restoring the previous one.
class DeviceScope {
 public:
  DeviceScope(int device, const std::string& owner) {
    throw_on_error(cudaGetDevice(&previous_), owner + ": cudaGetDevice");
    throw_on_error(cudaSetDevice(device), owner + ": cudaSetDevice");
  }
  ~DeviceScope() { cudaSetDevice(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = 0;
};

// One cudaMalloc'd array uploaded from host memory, on the current device.
// `owner` and `noun` name it in errors ("awq", "AWQ weights").
template <typename T>
class DeviceArray {
 public:
  DeviceArray(const std::vector<T>& host, std::string owner, std::string noun)
      : count_(host.size()), owner_(std::move(owner)), noun_(std::move(noun)) {
    throw_on_error(cudaMalloc(reinterpret_cast<void**>(&data_), bytes()), owner_ + ": allocating " + noun_);
    if (const cudaError_t e = cudaMemcpy(data_, host.data(), bytes(), cudaMemcpyHostToDevice); e != cudaSuccess) {
      cudaFree(data_);  // the destructor does not run for a constructor that throws
      throw_on_error(e, owner_ + ": uploading " + noun_);
    }
  }
  ~DeviceArray() {
    if (data_ != nullptr) cudaFree(data_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  const T* data() const { return data_; }
  T* data() { return data_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    throw_on_error(cudaMemcpy(host.data(), data_, bytes(), cudaMemcpyDeviceToHost),
                   owner_ + ": reading " + noun_ + " back");
    return host;
  }

 private:
  T* data_ = nullptr;
  std::size_t count_ = 0;
  std::string owner_, noun_;
};

// The one T(device) the callers share while any holds it (a library handle
// with a workspace of its own, say: one per layer would cost hundreds of MB).
template <typename T>
std::shared_ptr<T> shared_for_device(int device) {
  static std::mutex mutex;
  static std::map<int, std::weak_ptr<T>> made;
  std::lock_guard<std::mutex> lock(mutex);
  std::shared_ptr<T> held = made[device].lock();
  if (!held) made[device] = held = std::make_shared<T>(device);
  return held;
}

}  // namespace hostrun::cuda
