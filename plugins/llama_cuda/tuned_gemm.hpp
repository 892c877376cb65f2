// The model's large matrix products through cuBLASLt, with the algorithm for
// each weight shape and row-count bucket chosen by timing cuBLASLt's own
// candidates on this GPU at load.
//
// Why: continuous batching makes steps of a few hundred rows (the 10k
// ShareGPT-like run averages ~460 tokens a step), where one heuristic choice
// per shape leaves SMs idle: 460 rows in 128-row tiles times 6144 columns in
// 256-column tiles is 96 tiles for 132 SMs. cuBLASLt offers other tile
// shapes, split-K and stream-K variants; which wins depends on the rows, so
// each bucket is timed (docs/cuda.md has the table this measured).
//
// y[m, n] = x[m, k] . w[n, k]^T, row-major, x and w of the model's dtype, y
// the same or f32. A product whose shape was not tuned, or whose algorithm
// does not support its row count, is the caller's (run returns false).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <compare>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace hostrun::llama_cuda {

class TunedGemm {
 public:
  TunedGemm() = default;
  ~TunedGemm();
  TunedGemm(const TunedGemm&) = delete;
  TunedGemm& operator=(const TunedGemm&) = delete;

  // `in_type`: CUDA_R_16BF or CUDA_R_16F. The workspace (for split-K) is the caller's.
  void init(cudaStream_t stream, cudaDataType_t in_type, void* workspace, size_t workspace_bytes);
  bool ready() const { return lt_ != nullptr; }

  struct Timing {
    int rows = 0;
    float heuristic_us = 0;  // cuBLASLt's first choice
    float tuned_us = 0;      // the fastest candidate (what run uses)
    int candidates = 0;
  };
  // For each bucket (ascending row counts), times up to `max_candidates` of
  // cuBLASLt's candidates on `x` / `y` (scratch of at least the largest
  // bucket's rows) with the real weights `w`, and keeps the fastest.
  std::vector<Timing> tune(int n, int k, bool f32_out, const void* w, const void* x, void* y,
                           std::span<const int> buckets, int max_candidates);

  // Enqueues the product on the stream with the algorithm of the smallest
  // tuned bucket holding m rows; false (nothing enqueued) when there is none.
  bool run(const void* x, const void* w, int m, int n, int k, void* y, bool f32_out);

 private:
  struct Shape {
    int n = 0, k = 0;
    bool f32_out = false;
    auto operator<=>(const Shape&) const = default;
  };
  struct Tuned {
    std::vector<int> buckets;
    std::vector<cublasLtMatmulAlgo_t> algos;
  };
  // The matrix layouts of one (rows, shape), made once.
  struct Layouts {
    cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr;
    int algo_bucket = -1;  // index of the bucket whose algorithm this row count takes; -1: none fits
  };
  Layouts& layouts(const Shape& shape, int m);
  void destroy(Layouts& l);

  cublasLtHandle_t lt_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;      // bf16/f16 in, f32 compute, transposed weight
  cudaStream_t stream_ = nullptr;
  cudaDataType_t in_type_ = CUDA_R_16BF;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Shape, Tuned> tuned_;
  std::map<std::pair<Shape, int>, Layouts> layouts_;
};

}  // namespace hostrun::llama_cuda
