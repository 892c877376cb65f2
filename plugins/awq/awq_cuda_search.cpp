// awq_cuda_search.hpp.
#include "awq_cuda_search.hpp"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <hostrun/sdk.hpp>

#include <cmath>
#include <numeric>
#include <vector>

#include "cuda/awq_search.hpp"
#include "cuda/device_memory.hpp"

namespace hostrun::awq {

namespace {

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(e == cudaErrorMemoryAllocation ? ErrorCode::out_of_memory : ErrorCode::internal,
                fmt::format("auto_awq on cuda: {}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorCode::internal, fmt::format("auto_awq on cuda: {}: {}", what, cublasGetStatusString(s)));
}

// Device memory of `count` Ts that keeps its block when asked for no more.
template <typename T>
class Scratch {
 public:
  Scratch() = default;
  ~Scratch() {
    if (data_) cudaFree(data_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* reserve(std::size_t count, const char* what) {
    if (count > capacity_) {
      if (data_) cudaFree(data_);
      data_ = nullptr;
      capacity_ = 0;
      check_cuda(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)), what);
      capacity_ = count;
    }
    return data_;
  }
  T* upload(const T* host, std::size_t count, const char* what) {
    reserve(count, what);
    check_cuda(cudaMemcpy(data_, host, count * sizeof(T), cudaMemcpyHostToDevice), what);
    return data_;
  }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace

struct CudaAwqSearch::State {
  int device = 0;
  cublasHandle_t cublas = nullptr;
  Scratch<float> x, weights, rounded_from, scales, error, product;
  Scratch<double> sums;
  std::vector<double> host_sums;

  // y = x E^T for x [tokens, in] (row stride x_stride) and E [out, in]:
  // column-major, y^T [out, tokens] = E x^T.
  void multiply(const float* x_rows, std::size_t x_stride, std::size_t tokens, const float* e, std::size_t out,
                std::size_t in, float* y) {
    const float one = 1.0f, zero = 0.0f;
    check_cublas(cublasSgemm(cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(out), int(tokens), int(in), &one, e, int(in),
                             x_rows, int(x_stride), &zero, y, int(out)),
                 "cublasSgemm");
  }
  // Column sums of squares of y [tokens, columns], read back.
  const std::vector<double>& column_sums(const float* y, std::size_t tokens, std::size_t columns) {
    double* d = sums.reserve(columns, "the sums of squares");
    check_cuda(cuda::column_sum_squares(y, std::int64_t(tokens), std::int64_t(columns), d, nullptr),
               "column_sum_squares");
    host_sums.resize(columns);
    check_cuda(cudaMemcpy(host_sums.data(), d, columns * sizeof(double), cudaMemcpyDeviceToHost),
               "reading the sums back");
    return host_sums;
  }
  // Mean over tokens and outputs of (x E^T)^2 for E = error [out, in] on the device.
  double mean_square_output(const float* x_rows, std::size_t tokens, const float* e, std::size_t out, std::size_t in) {
    float* y = product.reserve(tokens * out, "the output errors");
    multiply(x_rows, in, tokens, e, out, in, y);
    const std::vector<double>& s = column_sums(y, tokens, out);
    return std::accumulate(s.begin(), s.end(), 0.0) / double(tokens * out);
  }
};

CudaAwqSearch::CudaAwqSearch(int device) : state_(std::make_unique<State>()) {
  state_->device = device;
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_cublas(cublasCreate(&state_->cublas), "cublasCreate");
  // f32 products as ref computes them: no TF32 (the default, said once here).
  check_cublas(cublasSetMathMode(state_->cublas, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
}

CudaAwqSearch::~CudaAwqSearch() {
  if (state_->cublas) cublasDestroy(state_->cublas);
}

ref::AwqScaleSearch CudaAwqSearch::search_scales(std::span<const ref::AwqLinearView> layers, std::size_t in_features,
                                                 const float* x, std::size_t tokens, std::size_t group_size,
                                                 int grid) {
  State& st = *state_;
  check_cuda(cudaSetDevice(st.device), "cudaSetDevice");
  const float* dx = st.x.upload(x, tokens * in_features, "the calibration inputs");
  std::size_t total = 0, widest = 0;
  for (const ref::AwqLinearView& layer : layers) {
    total += layer.out_features * in_features;
    widest = std::max(widest, layer.out_features);
  }
  float* dw = st.weights.reserve(total, "the weights");
  std::vector<const float*> device_weights;
  for (const ref::AwqLinearView& layer : layers) {
    device_weights.push_back(dw);
    check_cuda(cudaMemcpy(dw, layer.weight, layer.out_features * in_features * sizeof(float), cudaMemcpyHostToDevice),
               "uploading the weights");
    dw += layer.out_features * in_features;
  }
  float* de = st.error.reserve(widest * in_features, "the rounding errors");
  float* ds = st.scales.reserve(in_features, "the scales");
  return ref::awq_search_scales_with(ref::awq_mean_abs(x, tokens, in_features), grid,
                                     [&](std::span<const float> scales) {
                                       check_cuda(cudaMemcpy(ds, scales.data(), in_features * sizeof(float),
                                                             cudaMemcpyHostToDevice),
                                                  "uploading the scales");
                                       double loss = 0.0;
                                       for (std::size_t l = 0; l < layers.size(); ++l) {
                                         const int out = int(layers[l].out_features);
                                         check_cuda(cuda::awq_scaled_rounding_error(
                                                        device_weights[l], device_weights[l], out, int(in_features),
                                                        int(group_size), ds, de, nullptr),
                                                    "awq_scaled_rounding_error");
                                         loss += st.mean_square_output(dx, tokens, de, size_t(out), in_features);
                                       }
                                       return loss;
                                     });
}

ref::AwqClipSearch CudaAwqSearch::search_clip(const float* weight, std::size_t out_features, std::size_t in_features,
                                              const float* x, std::size_t tokens, std::size_t group_size, int grid,
                                              double max_shrink) {
  State& st = *state_;
  check_cuda(cudaSetDevice(st.device), "cudaSetDevice");
  const std::size_t groups = in_features / group_size, steps = ref::awq_clip_steps(grid, max_shrink);
  const int out = int(out_features), in = int(in_features), group = int(group_size);
  const float* dx = st.x.upload(x, tokens * in_features, "the calibration inputs");
  const float* dw = st.weights.upload(weight, out_features * in_features, "the weights");
  // Per group of input channels, every (row, candidate)'s error D [out * steps, group]
  // and its partial products x_g D^T [tokens, out * steps] at once.
  const std::size_t candidates = out_features * steps;
  float* dd = st.error.reserve(std::max(candidates * group_size, out_features * in_features), "the clip candidates");
  float* dy = st.product.reserve(std::max(tokens * candidates, tokens * out_features), "the partial products");
  ref::AwqClipSearch found;
  found.clipped.assign(weight, weight + out_features * in_features);
  found.shrink.assign(out_features * groups, 0.0f);
  std::vector<float> clamped(group_size), error(group_size);
  for (std::size_t g = 0; g < groups; ++g) {
    check_cuda(cuda::awq_clip_candidate_errors(dw, out, in, group, int(g), int(steps), grid, dd, nullptr),
               "awq_clip_candidate_errors");
    st.multiply(dx + g * group_size, in_features, tokens, dd, candidates, group_size, dy);
    const std::vector<double>& err = st.column_sums(dy, tokens, candidates);
    for (std::size_t o = 0; o < out_features; ++o) {
      std::size_t best_k = 0;
      for (std::size_t k = 1; k < steps; ++k)
        if (err[o * steps + k] < err[o * steps + best_k]) best_k = k;  // ties keep the smaller shrink, as ref
      found.shrink[o * groups + g] = float(double(best_k) / grid);
      if (best_k == 0) continue;  // c = max |w|: nothing clamped
      ref::awq_clip_candidate(weight + o * in_features + g * group_size, group_size, int(best_k), grid,
                              clamped.data(), error.data());
      std::copy(clamped.begin(), clamped.end(), found.clipped.begin() + std::ptrdiff_t(o * in_features + g * group_size));
    }
  }
  // The whole layer's losses as written: clipped-then-rounded, and plainly rounded (scales 1).
  const std::vector<float> ones(in_features, 1.0f);
  const float* d_ones = st.scales.upload(ones.data(), in_features, "the unit scales");
  const float* d_clipped = st.rounded_from.upload(found.clipped.data(), found.clipped.size(), "the clipped weights");
  check_cuda(cuda::awq_scaled_rounding_error(d_clipped, dw, out, in, group, d_ones, dd, nullptr),
             "awq_scaled_rounding_error");
  found.loss = st.mean_square_output(dx, tokens, dd, out_features, in_features);
  check_cuda(cuda::awq_scaled_rounding_error(dw, dw, out, in, group, d_ones, dd, nullptr),
             "awq_scaled_rounding_error");
  found.rtn_loss = st.mean_square_output(dx, tokens, dd, out_features, in_features);
  return found;
}

}  // namespace hostrun::awq
