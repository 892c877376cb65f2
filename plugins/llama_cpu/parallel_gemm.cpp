#include "parallel_gemm.hpp"

#include <algorithm>
#include <thread>
#include <vector>

#include "ref/gemm.hpp"

namespace hostrun::llama_cpu {

namespace {

// Below this many multiply-adds a thread costs more than it saves.
constexpr std::size_t min_work_per_thread = std::size_t(1) << 16;
// Slices are whole multiples of ref::gemm's 32-row weight tile.
constexpr std::size_t slice_granule = 32;

// Columns [first, last) of y, computed into `slice` ([m, last - first]) and
// copied out. Allocates nothing (ref::gemm allocates only for 16-bit
// weights), so nothing can throw on a worker thread.
void gemm_columns(const float* x, const float* weight, std::size_t m, std::size_t first, std::size_t last,
                  std::size_t n, std::size_t k, float* slice, float* y) {
  const std::size_t width = last - first;
  ref::gemm(x, weight + first * k, ref::DType::f32, m, width, k, slice);
  for (std::size_t row = 0; row < m; ++row) std::copy(slice + row * width, slice + (row + 1) * width, y + row * n + first);
}

}  // namespace

void parallel_gemm(const float* x, const float* weight, std::size_t m, std::size_t n, std::size_t k, float* y,
                   int threads) {
  std::size_t workers = threads > 1 ? std::size_t(threads) : 1;
  workers = std::min(workers, std::max<std::size_t>(1, m * n * k / min_work_per_thread));
  workers = std::min(workers, (n + slice_granule - 1) / slice_granule);
  if (workers <= 1) {
    ref::gemm(x, weight, ref::DType::f32, m, n, k, y);
    return;
  }
  const std::size_t granules = (n + slice_granule - 1) / slice_granule;
  std::vector<float> slices(m * n);
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  std::size_t first = 0;
  for (std::size_t w = 0; w < workers; ++w) {
    const std::size_t last = std::min(n, (granules * (w + 1) / workers) * slice_granule);
    bool spawned = false;
    if (w + 1 < workers) {
      try {
        pool.emplace_back(gemm_columns, x, weight, m, first, last, n, k, slices.data() + m * first, y);
        spawned = true;
      } catch (...) {
        // No thread to be had (resource limits): this slice runs here instead,
        // with the same result.
      }
    }
    if (!spawned) gemm_columns(x, weight, m, first, last, n, k, slices.data() + m * first, y);  // the calling thread takes the last slice
    first = last;
  }
  for (auto& thread : pool) thread.join();
}

}  // namespace hostrun::llama_cpu
