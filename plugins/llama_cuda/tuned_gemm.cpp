#include "tuned_gemm.hpp"

#include <fmt/format.h>
#include <hostrun/sdk.hpp>

#include <algorithm>
#include <limits>

namespace hostrun::llama_cuda {

namespace {

void check_lt(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorCode::internal, fmt::format("llama_cuda: {}: {}", what, cublasGetStatusString(status)));
}
void check_cuda(cudaError_t error, const char* what) {
  if (error != cudaSuccess)
    throw Error(ErrorCode::internal, fmt::format("llama_cuda: {}: {}", what, cudaGetErrorString(error)));
}

// Events around `reps` launches, after two untimed ones; +inf when the candidate fails.
template <typename Launch>
float time_us(cudaStream_t stream, int reps, Launch&& launch) {
  for (int i = 0; i < 2; ++i)
    if (!launch()) return std::numeric_limits<float>::infinity();
  cudaEvent_t start = nullptr, stop = nullptr;
  check_cuda(cudaEventCreate(&start), "cudaEventCreate");
  check_cuda(cudaEventCreate(&stop), "cudaEventCreate");
  cudaEventRecord(start, stream);
  bool ok = true;
  for (int i = 0; i < reps && ok; ++i) ok = launch();
  cudaEventRecord(stop, stream);
  cudaError_t synced = cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  check_cuda(synced, "timing a GEMM candidate");
  return ok ? ms * 1000.0f / float(reps) : std::numeric_limits<float>::infinity();
}

}  // namespace

TunedGemm::~TunedGemm() {
  for (auto& [key, l] : layouts_) destroy(l);
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (lt_) cublasLtDestroy(lt_);
}

void TunedGemm::destroy(Layouts& l) {
  if (l.w) cublasLtMatrixLayoutDestroy(l.w);
  if (l.x) cublasLtMatrixLayoutDestroy(l.x);
  if (l.y) cublasLtMatrixLayoutDestroy(l.y);
  l = Layouts{};
}

void TunedGemm::init(cudaStream_t stream, cudaDataType_t in_type, void* workspace, size_t workspace_bytes) {
  stream_ = stream;
  in_type_ = in_type;
  workspace_ = workspace;
  workspace_bytes_ = workspace_bytes;
  check_lt(cublasLtCreate(&lt_), "cublasLtCreate");
  check_lt(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  // Column-major view of the row-major product: y^T[n, m] = w[n, k] . x^T[k, m],
  // where the row-major weight is a column-major [k, n] matrix used transposed.
  const cublasOperation_t transposed = CUBLAS_OP_T, plain = CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transposed, sizeof(transposed)),
           "cublasLtMatmulDescSetAttribute");
  check_lt(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof(plain)),
           "cublasLtMatmulDescSetAttribute");
}

TunedGemm::Layouts& TunedGemm::layouts(const Shape& shape, int m) {
  auto [it, made] = layouts_.try_emplace({shape, m});
  Layouts& l = it->second;
  if (!made) return l;
  check_lt(cublasLtMatrixLayoutCreate(&l.w, in_type_, uint64_t(shape.k), uint64_t(shape.n), int64_t(shape.k)),
           "cublasLtMatrixLayoutCreate");
  check_lt(cublasLtMatrixLayoutCreate(&l.x, in_type_, uint64_t(shape.k), uint64_t(m), int64_t(shape.k)),
           "cublasLtMatrixLayoutCreate");
  check_lt(cublasLtMatrixLayoutCreate(&l.y, shape.f32_out ? CUDA_R_32F : in_type_, uint64_t(shape.n), uint64_t(m),
                                      int64_t(shape.n)),
           "cublasLtMatrixLayoutCreate");
  auto tuned = tuned_.find(shape);
  if (tuned == tuned_.end()) return l;
  const std::vector<int>& buckets = tuned->second.buckets;
  // The smallest bucket holding m rows (the largest for more), if its algorithm takes m rows.
  size_t b = size_t(std::lower_bound(buckets.begin(), buckets.end(), m) - buckets.begin());
  if (b == buckets.size()) b = buckets.size() - 1;
  cublasLtMatmulHeuristicResult_t checked{};
  if (cublasLtMatmulAlgoCheck(lt_, desc_, l.w, l.x, l.y, l.y, &tuned->second.algos[b], &checked) ==
          CUBLAS_STATUS_SUCCESS &&
      checked.workspaceSize <= workspace_bytes_)
    l.algo_bucket = int(b);
  return l;
}

std::vector<TunedGemm::Timing> TunedGemm::tune(int n, int k, bool f32_out, const void* w, const void* x, void* y,
                                               std::span<const int> buckets, int max_candidates) {
  const Shape shape{n, k, f32_out};
  // Layouts made before this tuning do not know its algorithms.
  for (auto it = layouts_.begin(); it != layouts_.end();)
    if (it->first.first == shape) {
      destroy(it->second);
      it = layouts_.erase(it);
    } else {
      ++it;
    }
  tuned_.erase(shape);

  cublasLtMatmulPreference_t preference = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
  check_lt(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes_,
                                                sizeof(workspace_bytes_)),
           "cublasLtMatmulPreferenceSetAttribute");
  Tuned tuned;
  std::vector<Timing> timings;
  std::vector<cublasLtMatmulHeuristicResult_t> results(size_t(std::max(max_candidates, 1)));
  const float alpha = 1.0f, beta = 0.0f;
  for (int m : buckets) {
    Layouts& l = layouts(shape, m);
    int returned = 0;
    if (cublasLtMatmulAlgoGetHeuristic(lt_, desc_, l.w, l.x, l.y, l.y, preference, int(results.size()),
                                       results.data(), &returned) != CUBLAS_STATUS_SUCCESS ||
        returned == 0)
      continue;
    // ~100 GFLOP per candidate (~0.2 ms), at least 3 and at most 50 launches.
    const double flops = 2.0 * double(m) * double(n) * double(k);
    const int reps = int(std::clamp(1e11 / flops, 3.0, 50.0));
    Timing timing;
    timing.rows = m;
    timing.candidates = returned;
    timing.tuned_us = std::numeric_limits<float>::infinity();
    int best = -1;
    for (int c = 0; c < returned; ++c) {
      const cublasLtMatmulAlgo_t* algo = &results[size_t(c)].algo;
      const float us = time_us(stream_, reps, [&] {
        return cublasLtMatmul(lt_, desc_, &alpha, w, l.w, x, l.x, &beta, y, l.y, y, l.y, algo, workspace_,
                              workspace_bytes_, stream_) == CUBLAS_STATUS_SUCCESS;
      });
      if (c == 0) timing.heuristic_us = us;
      if (us < timing.tuned_us) {
        timing.tuned_us = us;
        best = c;
      }
    }
    if (best < 0) continue;
    tuned.buckets.push_back(m);
    tuned.algos.push_back(results[size_t(best)].algo);
    timings.push_back(timing);
  }
  cublasLtMatmulPreferenceDestroy(preference);
  // The layouts made while timing hold no algorithm; run() makes them again.
  for (auto it = layouts_.begin(); it != layouts_.end();)
    if (it->first.first == shape) {
      destroy(it->second);
      it = layouts_.erase(it);
    } else {
      ++it;
    }
  if (!tuned.buckets.empty()) tuned_.emplace(shape, std::move(tuned));
  return timings;
}

bool TunedGemm::run(const void* x, const void* w, int m, int n, int k, void* y, bool f32_out) {
  if (!lt_ || m <= 0) return false;
  const Shape shape{n, k, f32_out};
  if (!tuned_.count(shape)) return false;
  Layouts& l = layouts(shape, m);
  if (l.algo_bucket < 0) return false;
  const float alpha = 1.0f, beta = 0.0f;
  return cublasLtMatmul(lt_, desc_, &alpha, w, l.w, x, l.x, &beta, y, l.y, y, l.y,
                        &tuned_.at(shape).algos[size_t(l.algo_bucket)], workspace_, workspace_bytes_,
                        stream_) == CUBLAS_STATUS_SUCCESS;
}

}  // namespace hostrun::llama_cuda
