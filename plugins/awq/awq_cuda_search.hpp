// `lite auto_awq --device cuda`'s searches on the model's GPU: the same
// grids, candidates and choices as ref::awq_search_scales / awq_search_clip
// (auto_awq.hpp, ref/awq_search.hpp), with the output errors computed there:
// the rounding errors by kernels/cuda's twins of ref's (bit for bit), the
// products x E^T by cuBLAS in f32 (no TF32) and the squares summed in
// double. Only the summation order differs from ref, so a loss moves in its
// last digits and a choice only between candidates that tie to ~1e-6.
// Built only with CUDA (HOSTRUN_AWQ_CUDA).
//
// Device memory for a search: the weights and x in f32, one error matrix
// and one product (largest for gate/up of an 8B model: ~1.5 GB).
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "ref/awq_search.hpp"

namespace hostrun::awq {

class CudaAwqSearch {
 public:
  explicit CudaAwqSearch(int device);  // throws Error
  ~CudaAwqSearch();
  CudaAwqSearch(const CudaAwqSearch&) = delete;
  CudaAwqSearch& operator=(const CudaAwqSearch&) = delete;

  // As ref::awq_search_scales / ref::awq_search_clip (host arrays in and out). Throw Error.
  ref::AwqScaleSearch search_scales(std::span<const ref::AwqLinearView> layers, std::size_t in_features,
                                    const float* x, std::size_t tokens, std::size_t group_size, int grid = 20);
  ref::AwqClipSearch search_clip(const float* weight, std::size_t out_features, std::size_t in_features,
                                 const float* x, std::size_t tokens, std::size_t group_size, int grid = 20,
                                 double max_shrink = 0.5);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace hostrun::awq
