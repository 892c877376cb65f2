// test_kernels_cuda: every CUDA op against its kernels/ref twin on fresh random
// inputs (the seed is printed; --seed N or HOSTRUN_TEST_SEED=N replays a run),
// plus --bench timings at Llama-3-8B sizes.
//
//   test_kernels_cuda                 all checks, one line per op and shape group,
//                                     then "kernels_cuda: N passed, M failed"
//   test_kernels_cuda --seed 1234     replay
//   test_kernels_cuda --bench         timings (cudaEvent, median of repeats)
//   test_kernels_cuda --bench-gemm    the small_gemm, fp8_small_gemm and awq_gemm timings alone
//   test_kernels_cuda --bench-fp8     the small_gemm and fp8_small_gemm timings alone
//   test_kernels_cuda --bench-decode [BxC[,BxC...]]  decode attention alone
//                                     (those batch B x context C shapes: for ncu)
//   test_kernels_cuda --bench-decode ... --decode-splits N[,N...]  each with
//                                     N splits (0: the plan's own count)
//   test_kernels_cuda --bench-decode ... --decode-unequal  contexts of a
//                                     batch drawn from [64, C], one of them C
//   test_kernels_cuda --bench-prefill prefill attention alone (each form
//                                     of the kernel side by side)
//   test_kernels_cuda --bench-dense   the vision encoders' attention alone
//                                     (CLIP ViT-L's shape, f32 and bf16 operands)
//   test_kernels_cuda -tc='*attention*'   doctest filters work as usual
//
// Without a GPU it exits with status 2 and says so (CI builds it and excludes
// the ctest label "gpu").
//
// Outputs are poisoned (0xFF bytes: NaN in every dtype) before each launch so
// an unwritten element fails; any NaN/inf where the reference is finite fails
// whatever the error norm. Error = ||gpu - ref||_2 / ||ref||_2 over the group.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/awq_gemm.hpp"
#include "cuda/awq_search.hpp"
#include "cuda/dense_attention.hpp"
#include "cuda/embedding.hpp"
#include "cuda/fp8_quant.hpp"
#include "cuda/fp8_small_gemm.hpp"
#include "cuda/kv_quant.hpp"
#include "cuda/paged_attention.hpp"
#include "cuda/rmsnorm.hpp"
#include "cuda/rope_kv.hpp"
#include "cuda/sampling.hpp"
#include "cuda/silu_mul.hpp"
#include "cuda/small_gemm.hpp"
#include "ref/awq.hpp"
#include "ref/awq_search.hpp"
#include "ref/dense_attention.hpp"
#include "ref/dtype.hpp"
#include "ref/gemm.hpp"
#include "ref/kv_quant.hpp"
#include "ref/embedding.hpp"
#include "ref/fp8_linear.hpp"
#include "ref/paged_attention.hpp"
#include "ref/rmsnorm.hpp"
#include "ref/rope.hpp"
#include "ref/sampling.hpp"
#include "ref/silu_mul.hpp"
#include "ref/write_kv.hpp"

namespace {

using hostrun::ref::DType;
namespace ref = hostrun::ref;
namespace gpu = hostrun::cuda;

std::uint64_t g_seed = 0;
int g_passed = 0;
int g_failed = 0;
int g_num_sms = 132;
std::vector<int> g_decode_splits{0};  // --decode-splits N[,N...]: forced split counts (0: the plan's own)
bool g_decode_unequal = false;  // --decode-unequal: contexts of one batch drawn from [64, C], one of them C
int g_compute_capability = 0;  // major * 10 + minor of the device
bool g_bench = false;  // outside doctest: a CUDA error ends the run

// A fresh generator per test case, derived from the run seed and the case
// name, so one case can be replayed alone with -tc and the same --seed.
std::mt19937_64 rng_for(const char* name) {
  std::uint64_t h = g_seed ^ 0x9E3779B97F4A7C15ull;
  for (const char* c = name; *c != '\0'; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 0x100000001B3ull;
  return std::mt19937_64(h);
}

void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    std::printf("CUDA error %s (%s) at %s:%d: %s\n", cudaGetErrorName(e), cudaGetErrorString(e), file, line, what);
    std::fflush(stdout);
    FAIL("CUDA error " << cudaGetErrorName(e) << " in " << what);
  }
}
#define CUDA_OK(expr) cuda_check((expr), #expr, __FILE__, __LINE__)
// After a launch: the launch error, then any error the kernel raised.
#define LAUNCH_OK(expr)                  \
  do {                                   \
    CUDA_OK(expr);                       \
    CUDA_OK(cudaDeviceSynchronize());    \
  } while (0)

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  std::size_t count = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { resize(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
  void resize(std::size_t n) {
    if (ptr != nullptr) cudaFree(ptr);
    ptr = nullptr;
    count = n;
    if (n > 0) CUDA_OK(cudaMalloc(&ptr, n * sizeof(T)));
  }
  std::size_t bytes() const { return count * sizeof(T); }
  void upload(const std::vector<T>& host) {
    resize(host.size());
    if (count > 0) CUDA_OK(cudaMemcpy(ptr, host.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(count);
    if (count > 0) CUDA_OK(cudaMemcpy(host.data(), ptr, bytes(), cudaMemcpyDeviceToHost));
    return host;
  }
  void poison() {
    if (count > 0) CUDA_OK(cudaMemset(ptr, 0xFF, bytes()));
  }
};

// ---- host data -----------------------------------------------------------

std::vector<float> random_floats(std::mt19937_64& rng, std::size_t n, float low, float high) {
  std::uniform_real_distribution<float> dist(low, high);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// values as stored in dtype (bytes) ...
std::vector<unsigned char> to_bytes(const std::vector<float>& values, DType dtype) {
  std::vector<unsigned char> bytes(values.size() * ref::dtype_size(dtype));
  ref::convert_from_f32(values.data(), values.size(), bytes.data(), dtype);
  return bytes;
}
// ... and read back as f32.
std::vector<float> from_bytes(const std::vector<unsigned char>& bytes, DType dtype) {
  std::vector<float> values(bytes.size() / ref::dtype_size(dtype));
  ref::convert_to_f32(bytes.data(), dtype, values.size(), values.data());
  return values;
}
// Rounds values to what dtype can hold, so the reference sees the GPU's inputs.
std::vector<float> rounded(const std::vector<float>& values, DType dtype) { return from_bytes(to_bytes(values, dtype), dtype); }

// A [rows, columns] result read out of rows `stride` apart, next to the
// reference: where the reference is NaN (a row holding NaN or inf) the output
// must be NaN too (counted in nan_wrong) and both are then set to 0, so the
// error norm covers the finite outputs.
struct NanRowsResult {
  std::vector<float> got, expected;
  std::size_t nan_wrong = 0;
};
NanRowsResult unpad_nan_rows(const std::vector<float>& padded, std::size_t stride, const std::vector<float>& want,
                             std::size_t rows, std::size_t columns) {
  NanRowsResult r{std::vector<float>(rows * columns), want, 0};
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < columns; ++j) {
      float& got = r.got[i * columns + j];
      got = padded[i * stride + j];
      if (std::isnan(want[i * columns + j])) {
        if (!std::isnan(got)) ++r.nan_wrong;
        got = r.expected[i * columns + j] = 0.0f;
      }
    }
  return r;
}

const char* name_of(DType dtype) { return ref::dtype_name(dtype); }

double tolerance_for(DType dtype) { return dtype == DType::f32 ? 1e-5 : 1e-2; }

struct Comparison {
  double rel_err = 0.0;
  long long non_finite = 0;  // gpu NaN/inf where ref is finite
  std::size_t first_bad = 0;
};

Comparison compare(const std::vector<float>& got, const std::vector<float>& want) {
  Comparison c;
  REQUIRE(got.size() == want.size());
  double diff = 0.0, norm = 0.0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) && std::isfinite(want[i])) {
      if (c.non_finite++ == 0) c.first_bad = i;
      continue;
    }
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  c.rel_err = norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  if (!std::isfinite(c.rel_err)) c.non_finite = std::max<long long>(c.non_finite, 1);
  return c;
}

// One printed line per op and shape group; counts toward the final summary.
bool report(const std::string& op, const std::string& group, const Comparison& c, double tol,
            const std::string& extra = "") {
  const bool ok = c.non_finite == 0 && c.rel_err < tol;
  std::printf("[%s] %-16s %-64s rel_err %.2e (tol %.0e)", ok ? "PASS" : "FAIL", op.c_str(), group.c_str(), c.rel_err,
              tol);
  if (c.non_finite > 0) std::printf("  %lld non-finite, first at %zu", c.non_finite, c.first_bad);
  if (!extra.empty()) std::printf("  %s", extra.c_str());
  std::printf("\n");
  std::fflush(stdout);
  (ok ? g_passed : g_failed) += 1;
  CHECK_MESSAGE(ok, op << " " << group << " rel_err " << c.rel_err);
  return ok;
}

bool report_bool(const std::string& op, const std::string& group, bool ok, const std::string& detail) {
  std::printf("[%s] %-16s %-64s %s\n", ok ? "PASS" : "FAIL", op.c_str(), group.c_str(), detail.c_str());
  std::fflush(stdout);
  (ok ? g_passed : g_failed) += 1;
  CHECK_MESSAGE(ok, op << " " << group << " " << detail);
  return ok;
}

std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* format, ...) {
  char text[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof text, format, args);
  va_end(args);
  return text;
}

constexpr DType all_dtypes[] = {DType::f32, DType::bf16, DType::f16};
constexpr DType half_dtypes[] = {DType::bf16, DType::f16};

// ---- embedding -----------------------------------------------------------

TEST_CASE("embedding") {
  auto rng = rng_for("embedding");
  struct Shape {
    int vocab, hidden, tokens;
  };
  const Shape shapes[] = {{1000, 4096, 1}, {1000, 4096, 1000}, {5003, 4095, 37}, {128, 7, 300}};
  for (const DType dtype : all_dtypes) {
    for (const Shape& shape : shapes) {
      const auto table_f32 = random_floats(rng, static_cast<std::size_t>(shape.vocab) * shape.hidden, -1, 1);
      const auto table_bytes = to_bytes(table_f32, dtype);
      std::vector<std::int32_t> ids(shape.tokens);
      std::uniform_int_distribution<int> id_dist(0, shape.vocab - 1);
      for (auto& id : ids) id = id_dist(rng);
      std::vector<float> want(static_cast<std::size_t>(shape.tokens) * shape.hidden);
      REQUIRE(ref::embedding_lookup(ids.data(), ids.size(), table_bytes.data(), dtype, shape.vocab, shape.hidden,
                                    want.data()) == ref::Status::ok);
      DeviceBuffer<unsigned char> table, out(want.size() * ref::dtype_size(dtype));
      DeviceBuffer<std::int32_t> d_ids, flag(1);
      table.upload(table_bytes);
      d_ids.upload(ids);
      out.poison();
      CUDA_OK(cudaMemset(flag.ptr, 0, 4));
      LAUNCH_OK(gpu::embedding_lookup(d_ids.ptr, shape.tokens, table.ptr, dtype, shape.vocab, shape.hidden, out.ptr,
                                      flag.ptr, nullptr));
      const auto got = from_bytes(out.download(), dtype);
      report("embedding", fmt("%s vocab=%d hidden=%d tokens=%d", name_of(dtype), shape.vocab, shape.hidden, shape.tokens),
             compare(got, want), 1e-7, flag.download()[0] == 0 ? "" : "unexpected error flag");
    }
  }
  // Bad ids: flagged, their rows zeroed, the good rows still right.
  const int vocab = 64, hidden = 256;
  const auto table_bytes = to_bytes(random_floats(rng, vocab * hidden, -1, 1), DType::bf16);
  const std::vector<std::int32_t> ids = {3, -1, 63, 64, 0};
  DeviceBuffer<unsigned char> table, out(ids.size() * hidden * 2);
  DeviceBuffer<std::int32_t> d_ids, flag(1);
  table.upload(table_bytes);
  d_ids.upload(ids);
  out.poison();
  CUDA_OK(cudaMemset(flag.ptr, 0, 4));
  LAUNCH_OK(gpu::embedding_lookup(d_ids.ptr, static_cast<int>(ids.size()), table.ptr, DType::bf16, vocab, hidden,
                                  out.ptr, flag.ptr, nullptr));
  const auto got = from_bytes(out.download(), DType::bf16);
  const auto table_f32 = from_bytes(table_bytes, DType::bf16);
  bool rows_ok = true;
  for (std::size_t t = 0; t < ids.size(); ++t) {
    for (int i = 0; i < hidden; ++i) {
      const bool bad = ids[t] < 0 || ids[t] >= vocab;
      const float expected = bad ? 0.0f : table_f32[static_cast<std::size_t>(ids[t]) * hidden + i];
      rows_ok &= got[t * hidden + i] == expected;
    }
  }
  const int flag_value = flag.download()[0];
  report_bool("embedding", "out-of-range ids -> error flag, zero rows",
              rows_ok && flag_value == static_cast<int>(ref::Status::token_id_out_of_range),
              fmt("flag=%d (%s) rows %s", flag_value, ref::status_name(static_cast<ref::Status>(flag_value)),
                  rows_ok ? "ok" : "WRONG"));
}

// ---- RMSNorm -------------------------------------------------------------

TEST_CASE("rmsnorm") {
  auto rng = rng_for("rmsnorm");
  struct Shape {
    int rows, hidden;
  };
  const Shape shapes[] = {{1, 4096}, {1000, 4096}, {5, 8192}, {3, 40000}, {17, 4095}, {64, 100}, {2, 5120}};
  const float eps = 1e-5f;
  for (const DType dtype : all_dtypes) {
    for (const Shape& shape : shapes) {
      const std::size_t n = static_cast<std::size_t>(shape.rows) * shape.hidden;
      const auto x = rounded(random_floats(rng, n, -2, 2), dtype);
      const auto residual = rounded(random_floats(rng, n, -4, 4), dtype);
      const auto weight_f32 = random_floats(rng, shape.hidden, 0.5f, 1.5f);
      const auto weight_bytes = to_bytes(weight_f32, dtype);

      std::vector<float> want_plain(n), want_fused(n), want_residual = residual;
      ref::rmsnorm(x.data(), weight_bytes.data(), dtype, shape.rows, shape.hidden, eps, want_plain.data());
      ref::add_rmsnorm(want_residual.data(), x.data(), weight_bytes.data(), dtype, shape.rows, shape.hidden, eps,
                       want_fused.data());

      DeviceBuffer<unsigned char> d_x, d_w, d_res, d_y(n * ref::dtype_size(dtype));
      d_x.upload(to_bytes(x, dtype));
      d_w.upload(weight_bytes);
      d_y.poison();
      LAUNCH_OK(gpu::rmsnorm(d_x.ptr, d_w.ptr, dtype, shape.rows, shape.hidden, eps, d_y.ptr, nullptr));
      const std::string group = fmt("%s rows=%d hidden=%d", name_of(dtype), shape.rows, shape.hidden);
      report("rmsnorm", group, compare(from_bytes(d_y.download(), dtype), want_plain), tolerance_for(dtype));

      d_res.upload(to_bytes(residual, dtype));
      d_y.poison();
      LAUNCH_OK(gpu::add_rmsnorm(d_res.ptr, d_x.ptr, d_w.ptr, dtype, shape.rows, shape.hidden, eps, d_y.ptr, nullptr));
      const Comparison res_cmp = compare(from_bytes(d_res.download(), dtype), want_residual);
      Comparison y_cmp = compare(from_bytes(d_y.download(), dtype), want_fused);
      y_cmp.rel_err = std::max(y_cmp.rel_err, res_cmp.rel_err);
      y_cmp.non_finite += res_cmp.non_finite;
      report("add_rmsnorm", group, y_cmp, tolerance_for(dtype), "(y and residual)");

      // In place (y aliases x), the way a model normalises its hidden state.
      d_y.upload(to_bytes(x, dtype));
      LAUNCH_OK(gpu::rmsnorm(d_y.ptr, d_w.ptr, dtype, shape.rows, shape.hidden, eps, d_y.ptr, nullptr));
      report("rmsnorm", group + " in-place", compare(from_bytes(d_y.download(), dtype), want_plain),
             tolerance_for(dtype));
    }
  }
}

// ---- SiLU-and-multiply ---------------------------------------------------

TEST_CASE("silu_and_mul") {
  auto rng = rng_for("silu_and_mul");
  struct Shape {
    int tokens, intermediate;
  };
  const Shape shapes[] = {{1, 14336}, {1000, 14336}, {37, 1001}, {5, 8}};
  for (const DType dtype : all_dtypes) {
    for (const Shape& shape : shapes) {
      const std::size_t n = static_cast<std::size_t>(shape.tokens) * shape.intermediate;
      auto gate_up = random_floats(rng, 2 * n, -8, 8);
      gate_up[0] = -100.0f;  // exp(-g) overflows: the limit is -0
      if (gate_up.size() > 2) gate_up[1] = 90.0f;
      gate_up = rounded(gate_up, dtype);
      std::vector<float> want(n);
      ref::silu_and_mul(gate_up.data(), shape.tokens, shape.intermediate, want.data());
      DeviceBuffer<unsigned char> d_in, d_out(n * ref::dtype_size(dtype));
      d_in.upload(to_bytes(gate_up, dtype));
      d_out.poison();
      LAUNCH_OK(gpu::silu_and_mul(d_in.ptr, dtype, shape.tokens, shape.intermediate, d_out.ptr, nullptr));
      report("silu_and_mul", fmt("%s tokens=%d intermediate=%d", name_of(dtype), shape.tokens, shape.intermediate),
             compare(from_bytes(d_out.download(), dtype), want), tolerance_for(dtype));
    }
  }
}

// ---- FP8 activation quantization --------------------------------------------

TEST_CASE("quantize_rows_e4m3") {
  auto rng = rng_for("quantize_rows_e4m3");
  struct Shape {
    int rows, k, padding;
    float static_scale;
  };
  // Llama-3-8B's linear inputs (4096, 14336), odd sizes, padded rows, and a
  // static scale small enough that the largest inputs saturate.
  const Shape shapes[] = {{1, 4096, 0, 0.0f}, {256, 4096, 0, 0.0f}, {7, 14336, 8, 0.0f}, {33, 1001, 3, 0.0f},
                          {9, 4096, 0, 0.004f}};
  for (const DType dtype : half_dtypes) {
    for (const Shape& shape : shapes) {
      const std::size_t stride = std::size_t(shape.k + shape.padding), m = std::size_t(shape.rows);
      std::vector<float> x = random_floats(rng, m * stride, -3, 3);
      if (m > 4) {
        std::fill(x.begin() + long(stride), x.begin() + long(2 * stride), 0.0f);  // row 1: zeros (scale 1)
        x[2 * stride + 5] = std::nanf("");                                         // row 2: NaN (scale NaN)
        x[3 * stride + 1] = -INFINITY;                                             // row 3: inf (scale NaN)
        x[4 * stride + 2] = 1e-30f;                                                // subnormal codes
      }
      x = rounded(x, dtype);
      std::vector<float> dense(m * std::size_t(shape.k));
      for (std::size_t i = 0; i < m; ++i)
        std::copy_n(x.begin() + long(i * stride), shape.k, dense.begin() + long(i * std::size_t(shape.k)));
      std::vector<std::uint8_t> want_codes(dense.size());
      std::vector<float> want_scales(m);
      ref::quantize_rows_e4m3(dense.data(), m, std::size_t(shape.k), want_codes.data(), want_scales.data(),
                              shape.static_scale);
      DeviceBuffer<unsigned char> d_x, d_codes(dense.size());
      DeviceBuffer<float> d_scales(m);
      d_x.upload(to_bytes(x, dtype));
      d_codes.poison();
      d_scales.poison();
      LAUNCH_OK(gpu::quantize_rows_e4m3(d_x.ptr, dtype, std::int64_t(stride), shape.rows, shape.k, d_codes.ptr,
                                        d_scales.ptr, shape.static_scale, nullptr));
      const std::vector<unsigned char> codes = d_codes.download();
      const std::vector<float> scales = d_scales.download();
      std::size_t code_mismatches = 0, scale_mismatches = 0;
      for (std::size_t i = 0; i < m; ++i) {
        const bool nan_row = std::isnan(want_scales[i]);
        if (nan_row ? !std::isnan(scales[i]) : scales[i] != want_scales[i]) ++scale_mismatches;
        for (std::size_t c = 0; c < std::size_t(shape.k); ++c) {
          const std::uint8_t got = codes[i * std::size_t(shape.k) + c], want = want_codes[i * std::size_t(shape.k) + c];
          const bool both_nan = (got & 0x7f) == 0x7f && (want & 0x7f) == 0x7f;  // the sign of a NaN may differ
          if (got != want && !both_nan) ++code_mismatches;
        }
      }
      report_bool("quantize_rows_e4m3",
                  fmt("%s rows=%d k=%d stride=%zu static=%g", name_of(dtype), shape.rows, shape.k, stride,
                      double(shape.static_scale)),
                  code_mismatches == 0 && scale_mismatches == 0,
                  fmt("%zu codes and %zu scales differ from ref", code_mismatches, scale_mismatches));
    }
  }
}

// The scales of an FP8 product applied to f32 sums: the same two f32
// multiplications as ref::fp8_linear, so equal after the output's rounding;
// padded output rows untouched, a NaN row scale gives a NaN row.
TEST_CASE("apply_fp8_scales") {
  auto rng = rng_for("apply_fp8_scales");
  struct Shape {
    int m, n, padding;
  };
  const Shape shapes[] = {{1, 4096, 0}, {5, 1001, 7}, {300, 6144, 0}};
  for (const DType dtype : half_dtypes) {
    for (const Shape& shape : shapes) {
      const std::size_t m = std::size_t(shape.m), n = std::size_t(shape.n), stride = n + std::size_t(shape.padding);
      const std::vector<float> sums = random_floats(rng, m * n, -3000, 3000);
      std::vector<float> x_scales = random_floats(rng, m, 1e-4f, 1e-2f), w_scales = random_floats(rng, n, 1e-5f, 1e-3f);
      if (m > 2) x_scales[2] = std::nanf("");
      std::vector<float> want(m * stride, 0.0f);
      for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j)
          want[i * stride + j] = std::isnan(x_scales[i]) ? x_scales[i] : sums[i * n + j] * (x_scales[i] * w_scales[j]);
      DeviceBuffer<float> d_sums(sums.size()), d_x_scales(m), d_w_scales(n);
      d_sums.upload(sums);
      d_x_scales.upload(x_scales);
      d_w_scales.upload(w_scales);
      DeviceBuffer<unsigned char> d_y(m * stride * ref::dtype_size(dtype));
      d_y.upload(to_bytes(std::vector<float>(m * stride, 0.0f), dtype));
      LAUNCH_OK(gpu::apply_fp8_scales(d_sums.ptr, shape.m, shape.n, d_x_scales.ptr, d_w_scales.ptr, d_y.ptr, dtype,
                                      std::int64_t(stride), nullptr));
      const std::vector<unsigned char> got = d_y.download(), expected = to_bytes(want, dtype);
      std::size_t mismatches = 0;
      const std::size_t bytes = ref::dtype_size(dtype);
      for (std::size_t e = 0; e < m * stride; ++e) {
        const float g = from_bytes({got.begin() + long(e * bytes), got.begin() + long((e + 1) * bytes)}, dtype)[0];
        const bool both_nan = std::isnan(g) && std::isnan(want[e]);
        if (!both_nan && std::memcmp(&got[e * bytes], &expected[e * bytes], bytes) != 0) ++mismatches;
      }
      report_bool("apply_fp8_scales", fmt("%s m=%d n=%d stride=%zu", name_of(dtype), shape.m, shape.n, stride),
                  mismatches == 0, fmt("%zu of %zu outputs differ from ref's formula", mismatches, m * stride));
    }
  }
  // With SiLU-and-multiply: ref's product, then ref::silu_and_mul; expf differs from the host's in the last
  // bits, so within the output's rounding.
  for (const DType dtype : half_dtypes) {
    const int m = 37, n = 2 * 700;
    const std::size_t half = std::size_t(n) / 2, stride = half + 3;
    const std::vector<float> sums = random_floats(rng, std::size_t(m) * n, -3000, 3000);
    std::vector<float> x_scales = random_floats(rng, m, 1e-4f, 1e-2f), w_scales = random_floats(rng, n, 1e-5f, 1e-3f);
    x_scales[2] = std::nanf("");
    std::vector<float> product(std::size_t(m) * n), want(std::size_t(m) * half);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) product[std::size_t(i) * n + j] = sums[std::size_t(i) * n + j] * (x_scales[i] * w_scales[j]);
    ref::silu_and_mul(product.data(), std::size_t(m), half, want.data());
    DeviceBuffer<float> d_sums(sums.size()), d_x_scales{std::size_t(m)}, d_w_scales{std::size_t(n)};
    d_sums.upload(sums);
    d_x_scales.upload(x_scales);
    d_w_scales.upload(w_scales);
    DeviceBuffer<unsigned char> d_y(std::size_t(m) * stride * ref::dtype_size(dtype));
    d_y.poison();
    LAUNCH_OK(gpu::apply_fp8_scales_silu_mul(d_sums.ptr, m, n, d_x_scales.ptr, d_w_scales.ptr, d_y.ptr, dtype,
                                             std::int64_t(stride), nullptr));
    const NanRowsResult r = unpad_nan_rows(from_bytes(d_y.download(), dtype), stride, want, std::size_t(m), half);
    report("apply_fp8_scales_silu_mul", fmt("%s m=%d n=%d stride=%zu", name_of(dtype), m, n, stride),
           compare(r.got, r.expected), tolerance_for(dtype),
           r.nan_wrong == 0 ? "" : fmt("%zu NaN-row outputs not NaN", r.nan_wrong));
  }
  report_bool("apply_fp8_scales", "refuses f32 out and stride < n",
              gpu::apply_fp8_scales(nullptr, 1, 8, nullptr, nullptr, nullptr, DType::f32, 8, nullptr) ==
                      cudaErrorInvalidValue &&
                  gpu::apply_fp8_scales(nullptr, 1, 8, nullptr, nullptr, nullptr, DType::bf16, 4, nullptr) ==
                      cudaErrorInvalidValue,
              "cudaErrorInvalidValue for each");
}

// x quantized by quantize_rows_e4m3, then fp8_small_gemm, against
// ref::fp8_linear on the same f32 rows (which quantizes them the same way).
// f32 out: the same products summed in another order by the tensor cores
// (1e-3 leaves room for their f32 sums; a fragment-layout mistake is O(1));
// bf16/f16 out: that dtype's rounding. Rows of zeros give zeros, a row with
// a NaN gives NaN outputs, as in ref.
TEST_CASE("fp8_small_gemm") {
  auto rng = rng_for("fp8_small_gemm");
  int major = 0, minor = 0;
  CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
  if (major * 10 + minor < 89) {
    report_bool("fp8_small_gemm", "below sm_89: refused", !gpu::fp8_small_gemm_supported(1, 64, nullptr, nullptr),
                "fp8_small_gemm_supported is false");
    return;
  }
  struct Shape {
    int m, n, k, y_padding;
  };
  // Llama-3-8B's QKV / O / down at batch 1, every row count's fragment
  // (1..8 one row group, 9..16 two), n not a multiple of 16, k of one chunk,
  // k not a multiple of the block's 8 x 4 chunks, padded y rows.
  const Shape shapes[] = {{1, 6144, 4096, 0}, {1, 4096, 14336, 0}, {3, 100, 128, 4}, {8, 33, 64, 0},
                          {9, 48, 192, 0},    {16, 64, 4160, 8},  {13, 17, 1088, 1}, {5, 4096, 4096, 0}};
  for (const DType out : {DType::bf16, DType::f16, DType::f32}) {
    for (const Shape& shape : shapes) {
      const std::size_t m = std::size_t(shape.m), n = std::size_t(shape.n), k = std::size_t(shape.k);
      const std::size_t y_stride = n + std::size_t(shape.y_padding);
      std::vector<float> x = random_floats(rng, m * k, -2, 2);
      if (m > 4) {
        std::fill(x.begin() + long(k), x.begin() + long(2 * k), 0.0f);  // row 1: zeros
        x[2 * k + 7] = std::nanf("");                                   // row 2: NaN
      }
      const std::vector<float> w = random_floats(rng, n * k, -0.05f, 0.05f);
      std::vector<std::uint8_t> w_codes(n * k), x_codes(m * k);
      std::vector<float> w_scales(n), x_scales(m), want(m * n);
      ref::quantize_weight_e4m3(w.data(), n, k, w_codes.data(), w_scales.data());
      ref::quantize_rows_e4m3(x.data(), m, k, x_codes.data(), x_scales.data());
      ref::fp8_linear(x.data(), m, k, ref::Fp8Weight{w_codes.data(), w_scales.data(), true}, n, want.data());
      DeviceBuffer<std::uint8_t> d_x(x_codes.size()), d_w;
      DeviceBuffer<float> d_xs, d_ws;
      d_x.upload(x_codes);
      d_w.upload(w_codes);
      d_xs.upload(x_scales);
      d_ws.upload(w_scales);
      DeviceBuffer<unsigned char> d_y(m * y_stride * ref::dtype_size(out));
      d_y.poison();
      gpu::Fp8SmallGemm gemm;
      gemm.x_codes = d_x.ptr;
      gemm.x_scales = d_xs.ptr;
      gemm.w_codes = d_w.ptr;
      gemm.w_scales = d_ws.ptr;
      gemm.m = shape.m;
      gemm.n = shape.n;
      gemm.k = shape.k;
      gemm.y = d_y.ptr;
      gemm.y_stride = std::int64_t(y_stride);
      gemm.y_dtype = out;
      LAUNCH_OK(gpu::fp8_small_gemm(gemm, nullptr));
      const NanRowsResult r = unpad_nan_rows(from_bytes(d_y.download(), out), y_stride, want, m, n);
      const std::string group = fmt("m=%d n=%d k=%d y_stride=%zu out=%s", shape.m, shape.n, shape.k, y_stride, name_of(out));
      report("fp8_small_gemm", group, compare(r.got, r.expected), out == DType::f32 ? 1e-3 : tolerance_for(out),
             r.nan_wrong == 0 ? "" : fmt("%zu outputs of a NaN row not NaN", r.nan_wrong));
      if (r.nan_wrong != 0) report_bool("fp8_small_gemm", group, false, "NaN rows");
    }
  }
  // What the kernel does not take: callers fall back to cuBLASLt.
  report_bool("fp8_small_gemm", "refuses m 0 / 17, k % 64, unaligned codes",
              !gpu::fp8_small_gemm_supported(0, 64, nullptr, nullptr) &&
                  !gpu::fp8_small_gemm_supported(17, 64, nullptr, nullptr) &&
                  !gpu::fp8_small_gemm_supported(1, 96, nullptr, nullptr) &&
                  !gpu::fp8_small_gemm_supported(1, 64, reinterpret_cast<void*>(8), nullptr),
              "fp8_small_gemm_supported is false for each");
}

// fp8_small_gemm given x's 16-bit rows (it quantizes them itself) and with
// the SiLU-and-multiply epilogue, against ref on the same 16-bit values:
// quantize_rows_e4m3 (dynamic or a static scale), fp8_linear, silu_and_mul.
// The fused epilogue applies SiLU to the f32 products, ref to its f32 ones,
// so only the order of the sums differs; the bound is the output dtype's
// rounding. Rows of zeros, NaN rows and padded x and y rows as above.
TEST_CASE("fp8_small_gemm quantizing x, SiLU-and-multiply") {
  auto rng = rng_for("fp8_small_gemm fused");
  int major = 0, minor = 0;
  CUDA_OK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0));
  CUDA_OK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0));
  if (major * 10 + minor < 89) return;  // refused there: the case above checks that
  struct Shape {
    int m, n, k, x_padding, y_padding;
    bool x16, silu_mul;
    float static_scale;
    int special;  // 1: row 0 all zeros; 2: a NaN in the last row
  };
  // Batch-1 Llama-3-8B gate/up (SiLU) and down (x quantized here), two rows,
  // a k that is not a multiple of 128, n not a multiple of 16; codes with
  // SiLU in both row groups.
  const Shape shapes[] = {{1, 28672, 4096, 0, 0, true, true, 0.0f, 0},  {1, 4096, 14336, 0, 0, true, false, 0.0f, 0},
                          {2, 4096, 8192, 8, 0, true, false, 0.0f, 2},  {2, 96, 192, 8, 4, true, true, 0.0f, 1},
                          {1, 34, 1088, 0, 2, true, false, 0.0f, 0},    {2, 64, 4160, 16, 0, true, true, 0.0f, 2},
                          {1, 66, 64, 0, 0, true, false, 0.0f, 1},      {2, 48, 320, 0, 0, true, false, 0.004f, 0},
                          {3, 64, 4096, 0, 0, false, true, 0.0f, 2},    {12, 130, 704, 0, 3, false, true, 0.0f, 1}};
  for (const DType dtype : {DType::bf16, DType::f16}) {
    for (const Shape& shape : shapes) {
      const std::size_t m = std::size_t(shape.m), n = std::size_t(shape.n), k = std::size_t(shape.k);
      const std::size_t outputs = shape.silu_mul ? n / 2 : n;
      const std::size_t x_stride = k + std::size_t(shape.x_padding), y_stride = outputs + std::size_t(shape.y_padding);
      // x as the 16-bit dtype holds it; ref reads the same values
      std::vector<float> x = from_bytes(to_bytes(random_floats(rng, m * k, -2, 2), dtype), dtype);
      if (shape.special == 1) std::fill(x.begin(), x.begin() + long(k), 0.0f);
      if (shape.special == 2) x[(m - 1) * k + 7] = std::nanf("");
      const std::vector<float> w = random_floats(rng, n * k, -0.05f, 0.05f);
      std::vector<std::uint8_t> w_codes(n * k), x_codes(m * k);
      std::vector<float> w_scales(n), x_scales(m), product(m * n), want(m * outputs);
      ref::quantize_weight_e4m3(w.data(), n, k, w_codes.data(), w_scales.data());
      ref::quantize_rows_e4m3(x.data(), m, k, x_codes.data(), x_scales.data(), shape.static_scale);
      ref::fp8_linear(x.data(), m, k, ref::Fp8Weight{w_codes.data(), w_scales.data(), true}, n, product.data(),
                      shape.static_scale);
      if (shape.silu_mul) ref::silu_and_mul(product.data(), m, outputs, want.data());
      else want = product;
      std::vector<float> x_padded(m * x_stride, 0.0f);
      for (std::size_t i = 0; i < m; ++i) std::copy_n(x.begin() + long(i * k), k, x_padded.begin() + long(i * x_stride));
      DeviceBuffer<unsigned char> d_x16;
      d_x16.upload(to_bytes(x_padded, dtype));
      DeviceBuffer<std::uint8_t> d_x(x_codes.size()), d_w;
      DeviceBuffer<float> d_xs, d_ws;
      d_x.upload(x_codes);
      d_w.upload(w_codes);
      d_xs.upload(x_scales);
      d_ws.upload(w_scales);
      DeviceBuffer<unsigned char> d_y(m * y_stride * ref::dtype_size(dtype));
      d_y.poison();
      gpu::Fp8SmallGemm gemm;
      if (shape.x16) {
        CHECK(gpu::fp8_small_gemm_quantizes(shape.m, shape.k, d_x16.ptr, std::int64_t(x_stride)));
        gemm.x16 = d_x16.ptr;
        gemm.x16_stride = std::int64_t(x_stride);
        gemm.static_scale = shape.static_scale;
      } else {
        gemm.x_codes = d_x.ptr;
        gemm.x_scales = d_xs.ptr;
      }
      gemm.w_codes = d_w.ptr;
      gemm.w_scales = d_ws.ptr;
      gemm.m = shape.m;
      gemm.n = shape.n;
      gemm.k = shape.k;
      gemm.silu_mul = shape.silu_mul;
      gemm.y = d_y.ptr;
      gemm.y_stride = std::int64_t(y_stride);
      gemm.y_dtype = dtype;
      LAUNCH_OK(gpu::fp8_small_gemm(gemm, nullptr));
      const NanRowsResult r = unpad_nan_rows(from_bytes(d_y.download(), dtype), y_stride, want, m, outputs);
      const std::string group =
          fmt("m=%d n=%d k=%d x=%s%s static=%g x_stride=%zu y_stride=%zu %s", shape.m, shape.n, shape.k,
              shape.x16 ? "16-bit" : "codes", shape.silu_mul ? " silu_mul" : "", double(shape.static_scale), x_stride,
              y_stride, name_of(dtype));
      report("fp8_small_gemm fused", group, compare(r.got, r.expected), tolerance_for(dtype),
             r.nan_wrong == 0 ? "" : fmt("%zu outputs of a NaN row not NaN", r.nan_wrong));
      if (r.nan_wrong != 0) report_bool("fp8_small_gemm fused", group, false, "NaN rows");
    }
  }
  // Where quantizing x in the GEMM stops paying (fp8_small_gemm.cu), odd strides, an odd n for SiLU.
  gpu::Fp8SmallGemm odd;
  odd.x_codes = reinterpret_cast<const std::uint8_t*>(256);
  odd.x_scales = reinterpret_cast<const float*>(256);
  odd.w_codes = reinterpret_cast<const std::uint8_t*>(256);
  odd.w_scales = reinterpret_cast<const float*>(256);
  odd.m = 1;
  odd.n = 33;
  odd.k = 64;
  odd.silu_mul = true;
  odd.y = reinterpret_cast<void*>(256);
  odd.y_stride = 64;
  const void* aligned = reinterpret_cast<void*>(256);
  report_bool("fp8_small_gemm fused", "quantizes 1 row of 16384 and 2 of 8192, refuses 3 rows, 1 of 16448, an odd x "
              "stride, SiLU of odd n",
              gpu::fp8_small_gemm_quantizes(1, 16384, aligned, 16384) &&
                  gpu::fp8_small_gemm_quantizes(2, 8192, aligned, 8192) &&
                  !gpu::fp8_small_gemm_quantizes(3, 1024, aligned, 1024) &&
                  !gpu::fp8_small_gemm_quantizes(1, 16448, aligned, 16448) &&
                  !gpu::fp8_small_gemm_quantizes(1, 64, aligned, 68) &&
                  gpu::fp8_small_gemm(odd, nullptr) == cudaErrorInvalidValue,
              "each as stated");
}

// ---- dense (vision) attention ----------------------------------------------

TEST_CASE("dense_attention") {
  auto rng = rng_for("dense_attention");
  enum Layout { bhtd, bthd, bhdt };  // storage order; bthd is the ViT's, bhdt reads each head transposed
  struct Case {
    int batch, heads, q_len, kv_len, head_dim;
    Layout layout;  // of q, k, v and out alike
  };
  // ViT-L/14-336 (577 tokens, 16 heads of 64), and the edges: partial tiles, one key, small heads, odd strides.
  const Case cases[] = {{1, 16, 577, 577, 64, bthd}, {2, 3, 65, 63, 64, bhtd}, {1, 2, 1, 1, 32, bthd},
                        {3, 2, 130, 200, 16, bthd},  {1, 1, 64, 64, 32, bhtd}, {2, 2, 17, 17, 8, bthd},
                        {1, 3, 40, 70, 40, bhtd},    {2, 2, 33, 77, 64, bhdt}, {1, 3, 9, 130, 24, bhdt},
                        // wgmma's tile plans: keys only in a short tile, two whole tiles, a short tile of exactly 16
                        {2, 2, 5, 9, 64, bthd},      {1, 2, 128, 128, 64, bhtd}, {1, 1, 20, 80, 64, bthd}};
  static const char* const kLayoutName[] = {"[b,h,t,d]", "[b,t,h,d]", "[b,h,d,t]"};
  // Each kernel this device runs (wgmma: compute capability 9.0, heads of 33 to 64).
  for (const gpu::DenseAttentionKernel kernel : {gpu::DenseAttentionKernel::mma_sync, gpu::DenseAttentionKernel::wgmma})
  for (const Case& c : cases) {
    if (!gpu::dense_attention_kernel_available(kernel, c.head_dim)) continue;
    const std::size_t n_q = std::size_t(c.batch) * c.heads * c.q_len * c.head_dim,
                      n_kv = std::size_t(c.batch) * c.heads * c.kv_len * c.head_dim;
    const auto strides = [&](int len) {
      const std::int64_t per_batch = std::int64_t(len) * c.heads * c.head_dim;
      switch (c.layout) {
        case bthd: return ref::AttentionStrides{per_batch, c.head_dim, std::int64_t(c.heads) * c.head_dim, 1};
        case bhdt: return ref::AttentionStrides{per_batch, std::int64_t(len) * c.head_dim, 1, len};
        default: return ref::AttentionStrides{per_batch, std::int64_t(len) * c.head_dim, c.head_dim, 1};
      }
    };
    // The kernel rounds q, k, v to bf16 as it loads them: the reference sees the same values.
    const std::vector<float> q = rounded(random_floats(rng, n_q, -3, 3), DType::bf16),
                             k = rounded(random_floats(rng, n_kv, -3, 3), DType::bf16),
                             v = rounded(random_floats(rng, n_kv, -2, 2), DType::bf16);
    const ref::DenseAttentionShape shape{c.batch, c.heads, c.q_len, c.kv_len, c.head_dim,
                                         float(1.0 / std::sqrt(double(c.head_dim)))};
    std::vector<float> want(n_q);
    ref::dense_attention(shape, q.data(), strides(c.q_len), k.data(), strides(c.kv_len), v.data(), strides(c.kv_len),
                         want.data(), strides(c.q_len));
    DeviceBuffer<float> d_q, d_k, d_v, d_out(n_q);
    DeviceBuffer<std::uint16_t> d_out_bf16(n_q);
    DeviceBuffer<unsigned char> workspace(gpu::dense_attention_workspace_bytes(shape));
    d_q.upload(q);
    d_k.upload(k);
    d_v.upload(v);
    d_out.poison();
    d_out_bf16.poison();
    const std::string what =
        fmt("%s b=%d h=%d q=%d kv=%d d=%d %s", kernel == gpu::DenseAttentionKernel::wgmma ? "wgmma" : "mma.sync",
            c.batch, c.heads, c.q_len, c.kv_len, c.head_dim, kLayoutName[c.layout]);
    const gpu::DenseAttentionInput f32_q{d_q.ptr, DType::f32, strides(c.q_len)},
        f32_k{d_k.ptr, DType::f32, strides(c.kv_len)}, f32_v{d_v.ptr, DType::f32, strides(c.kv_len)};
    LAUNCH_OK(gpu::dense_attention(shape, f32_q, f32_k, f32_v, d_out.ptr, DType::f32, strides(c.q_len), workspace.ptr,
                                   nullptr, kernel));
    const std::vector<float> f32_run = d_out.download();
    // P is rounded to bf16 for the second product: ~3 significant digits.
    report("dense_attention", what, compare(f32_run, want), 1e-2);
    // The same into bf16: each value the f32 run's, rounded.
    LAUNCH_OK(gpu::dense_attention(shape, f32_q, f32_k, f32_v, d_out_bf16.ptr, DType::bf16, strides(c.q_len),
                                   workspace.ptr, nullptr, kernel));
    const std::vector<std::uint16_t> bf16_run = d_out_bf16.download();
    std::size_t differ = 0;
    for (std::size_t i = 0; i < n_q; ++i) differ += bf16_run[i] != ref::f32_to_bf16(f32_run[i]);
    CHECK_MESSAGE(differ == 0, "dense_attention bf16 out " << what << ": " << differ << " values differ");
    // bf16 operands holding the same values: read in place (contiguous rows
    // of 32 or 64) or gathered, the tiles hold the same bits, so the output
    // is the f32 operands' bit for bit.
    const auto bits = [](const std::vector<float>& x) {
      std::vector<std::uint16_t> b(x.size());
      for (std::size_t i = 0; i < x.size(); ++i) b[i] = ref::f32_to_bf16(x[i]);
      return b;
    };
    DeviceBuffer<std::uint16_t> b_q, b_k, b_v;
    b_q.upload(bits(q));
    b_k.upload(bits(k));
    b_v.upload(bits(v));
    const gpu::DenseAttentionInput bf16_q{b_q.ptr, DType::bf16, strides(c.q_len)},
        bf16_k{b_k.ptr, DType::bf16, strides(c.kv_len)}, bf16_v{b_v.ptr, DType::bf16, strides(c.kv_len)};
    const bool in_place = gpu::dense_attention_reads_in_place(shape, bf16_q) &&
                          gpu::dense_attention_reads_in_place(shape, bf16_k) &&
                          gpu::dense_attention_reads_in_place(shape, bf16_v);
    CHECK_MESSAGE(in_place == ((c.head_dim == 32 || c.head_dim == 64) && c.layout != bhdt),
                  "bf16 operands of " << what << (in_place ? " read in place" : " gathered"));
    d_out.poison();
    LAUNCH_OK(gpu::dense_attention(shape, bf16_q, bf16_k, bf16_v, d_out.ptr, DType::f32, strides(c.q_len),
                                   workspace.ptr, nullptr, kernel));
    const std::vector<float> bf16_operands_run = d_out.download();
    differ = 0;
    for (std::size_t i = 0; i < n_q; ++i) differ += std::memcmp(&bf16_operands_run[i], &f32_run[i], 4) != 0;
    CHECK_MESSAGE(differ == 0, "dense_attention bf16 operands " << what << ": " << differ << " values differ");
  }
  CHECK_FALSE(gpu::dense_attention_supports(128));
  CHECK_FALSE(gpu::dense_attention_kernel_available(gpu::DenseAttentionKernel::wgmma, 32));
  CHECK_FALSE(gpu::dense_attention_kernel_available(gpu::DenseAttentionKernel::mma_sync, 72));
  if (!gpu::dense_attention_kernel_available(gpu::DenseAttentionKernel::wgmma, 64)) {
    unsigned char* some_workspace = nullptr;  // refused before any operand is read
    CHECK(gpu::dense_attention({1, 1, 4, 4, 64, 1.0f}, {}, {}, {}, nullptr, DType::f32, {}, &some_workspace, nullptr,
                               gpu::DenseAttentionKernel::wgmma) == cudaErrorNotSupported);
  }
  CHECK(gpu::dense_attention({1, 1, 4, 4, 72, 1.0f}, {}, {}, {}, nullptr, DType::f32, {}, nullptr, nullptr) ==
        cudaErrorInvalidValue);
  unsigned char* scratch = nullptr;  // any non-null workspace: the dtype is refused before it is used
  CHECK(gpu::dense_attention({1, 1, 4, 4, 64, 1.0f}, {}, {}, {}, nullptr, DType::f16, {}, &scratch, nullptr) ==
        cudaErrorInvalidValue);
  const gpu::DenseAttentionInput f16_operand{nullptr, DType::f16, {}};
  CHECK(gpu::dense_attention({1, 1, 4, 4, 64, 1.0f}, f16_operand, {}, {}, nullptr, DType::f32, {}, &scratch,
                             nullptr) == cudaErrorInvalidValue);
}

// ---- small-m linear layer -------------------------------------------------

TEST_CASE("small_gemm") {
  auto rng = rng_for("small_gemm");
  struct Shape {
    int m, n, k;
  };
  // Llama-3-8B's fused QKV / O / down and odd sizes (k not a multiple of a
  // warp's 256-element stride, n not a multiple of the block's 4 columns).
  const Shape shapes[] = {{1, 6144, 4096}, {3, 4096, 14336}, {8, 1001, 4096}, {5, 77, 264}, {2, 3, 8}, {8, 130, 1032}};
  for (const DType dtype : {DType::bf16, DType::f16}) {
    for (const Shape& shape : shapes) {
      for (const bool y_f32 : {false, true}) {
        const auto x = rounded(random_floats(rng, std::size_t(shape.m) * shape.k, -1, 1), dtype);
        const auto w = rounded(random_floats(rng, std::size_t(shape.n) * shape.k, -0.05f, 0.05f), dtype);
        const auto w_bytes = to_bytes(w, dtype);
        std::vector<float> want(std::size_t(shape.m) * shape.n);
        ref::gemm(x.data(), w_bytes.data(), dtype, shape.m, shape.n, shape.k, want.data());
        DeviceBuffer<unsigned char> d_x, d_w, d_y(want.size() * (y_f32 ? 4 : ref::dtype_size(dtype)));
        d_x.upload(to_bytes(x, dtype));
        d_w.upload(w_bytes);
        d_y.poison();
        LAUNCH_OK(gpu::small_gemm(d_x.ptr, d_w.ptr, dtype, shape.m, shape.n, shape.k, d_y.ptr, y_f32, nullptr));
        const auto y = d_y.download();
        std::vector<float> got(want.size());
        if (y_f32) std::memcpy(got.data(), y.data(), y.size());
        else got = from_bytes(y, dtype);
        // f32 out: the same products summed in another order (1e-5); stored in
        // bf16/f16: that dtype's rounding.
        report("small_gemm", fmt("%s m=%d n=%d k=%d out=%s", name_of(dtype), shape.m, shape.n, shape.k,
                                 y_f32 ? "f32" : name_of(dtype)),
               compare(got, want), y_f32 ? 1e-5 : tolerance_for(dtype));
      }
    }
  }
  // Gate/up with SiLU-and-multiply fused: against ref::gemm then ref::silu_and_mul in f32.
  for (const DType dtype : {DType::bf16, DType::f16}) {
    for (const Shape& shape : {Shape{1, 14336, 4096}, Shape{3, 300, 264}, Shape{8, 77, 1032}}) {
      const int inter = shape.n;
      const auto x = rounded(random_floats(rng, std::size_t(shape.m) * shape.k, -1, 1), dtype);
      const auto w = rounded(random_floats(rng, std::size_t(2 * inter) * shape.k, -0.1f, 0.1f), dtype);
      const auto w_bytes = to_bytes(w, dtype);
      std::vector<float> gate_up(std::size_t(shape.m) * 2 * inter), want(std::size_t(shape.m) * inter);
      ref::gemm(x.data(), w_bytes.data(), dtype, shape.m, 2 * inter, shape.k, gate_up.data());
      ref::silu_and_mul(gate_up.data(), shape.m, inter, want.data());
      DeviceBuffer<unsigned char> d_x, d_w, d_y(want.size() * ref::dtype_size(dtype));
      d_x.upload(to_bytes(x, dtype));
      d_w.upload(w_bytes);
      d_y.poison();
      LAUNCH_OK(gpu::small_gemm_silu_mul(d_x.ptr, d_w.ptr, dtype, shape.m, inter, shape.k, d_y.ptr, nullptr));
      report("small_gemm_silu", fmt("%s m=%d intermediate=%d k=%d", name_of(dtype), shape.m, inter, shape.k),
             compare(from_bytes(d_y.download(), dtype), want), tolerance_for(dtype));
    }
  }
  // The QKV projection with RoPE fused: against ref::gemm, rounded to dtype,
  // then ref::apply_rope on the first rope_heads heads, rounded again.
  for (const DType dtype : {DType::bf16, DType::f16}) {
    struct RopeShape {
      int m, q_heads, kv_heads, head_dim, k;
    };
    for (const RopeShape shape : {RopeShape{1, 32, 8, 128, 4096}, RopeShape{3, 4, 2, 64, 264}, RopeShape{8, 6, 1, 128, 1032}}) {
      const int rope_heads = shape.q_heads + shape.kv_heads;
      const int n = (shape.q_heads + 2 * shape.kv_heads) * shape.head_dim;
      ref::RopeParams params;
      params.head_dim = std::size_t(shape.head_dim);
      params.theta = 500000.0;
      params.scaling_type = ref::RopeScalingType::llama3;
      const ref::RopeTable table = ref::make_rope_table(params);
      std::vector<std::int32_t> positions(std::size_t(shape.m));
      for (auto& p : positions) p = std::uniform_int_distribution<int>(0, 100000)(rng);
      const auto x = rounded(random_floats(rng, std::size_t(shape.m) * shape.k, -1, 1), dtype);
      const auto w = rounded(random_floats(rng, std::size_t(n) * shape.k, -0.1f, 0.1f), dtype);
      const auto w_bytes = to_bytes(w, dtype);
      std::vector<float> want(std::size_t(shape.m) * n);
      ref::gemm(x.data(), w_bytes.data(), dtype, shape.m, n, shape.k, want.data());
      want = rounded(want, dtype);
      for (int r = 0; r < shape.m; ++r) {
        float* row = want.data() + std::size_t(r) * n;  // [q heads | k heads] are contiguous: rotate them as "q"
        ref::apply_rope(table, &positions[std::size_t(r)], 1, row, std::size_t(rope_heads), nullptr, 0);
      }
      want = rounded(want, dtype);
      DeviceBuffer<unsigned char> d_x, d_w, d_y(want.size() * ref::dtype_size(dtype));
      DeviceBuffer<std::int32_t> d_pos;
      DeviceBuffer<float> d_freq;
      d_x.upload(to_bytes(x, dtype));
      d_w.upload(w_bytes);
      d_pos.upload(positions);
      d_freq.upload(table.inv_freq);
      d_y.poison();
      LAUNCH_OK(gpu::small_gemm_rope(d_x.ptr, d_w.ptr, dtype, shape.m, n, shape.k, rope_heads, shape.head_dim,
                                     d_pos.ptr, d_freq.ptr, d_y.ptr, nullptr));
      report("small_gemm_rope",
             fmt("%s m=%d heads=%d/%d hd=%d k=%d", name_of(dtype), shape.m, shape.q_heads, shape.kv_heads,
                 shape.head_dim, shape.k),
             compare(from_bytes(d_y.download(), dtype), want), tolerance_for(dtype));
    }
  }
  // Refused: k not a multiple of 8, m beyond the instantiated widths, f32.
  DeviceBuffer<unsigned char> any(1024);
  CHECK(gpu::small_gemm(any.ptr, any.ptr, DType::bf16, 1, 4, 12, any.ptr, false, nullptr) == cudaErrorInvalidValue);
  CHECK(gpu::small_gemm(any.ptr, any.ptr, DType::bf16, gpu::small_gemm_max_rows + 1, 4, 8, any.ptr, false, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(gpu::small_gemm(any.ptr, any.ptr, DType::f32, 1, 4, 8, any.ptr, false, nullptr) == cudaErrorInvalidValue);
}

// ---- RoPE + KV write -----------------------------------------------------

// Where a case puts q, k and v: the head groups of one fused row (llama_cuda's
// QKV product), three buffers with padded row strides, or three buffers whose
// strides and k's start are not 16-byte multiples (the kernel's element path).
enum class QkvLayout { fused, separate, unaligned };

const char* layout_name(QkvLayout layout) {
  switch (layout) {
    case QkvLayout::fused: return "fused row";
    case QkvLayout::separate: return "separate";
    case QkvLayout::unaligned: return "unaligned";
  }
  return "?";
}

// One device buffer's contents as f32 (rounded to the dtype), with the
// [tokens, width] rows of a tensor placed `stride` elements apart from `offset`.
struct RowsInBuffer {
  std::size_t offset = 0;
  std::int64_t stride = 0;
  int width = 0;
};
void place_rows(std::vector<float>& image, const RowsInBuffer& at, const std::vector<float>& rows, int tokens) {
  for (int t = 0; t < tokens; ++t)
    std::copy_n(rows.begin() + static_cast<std::ptrdiff_t>(t) * at.width, at.width,
                image.begin() + static_cast<std::ptrdiff_t>(at.offset + static_cast<std::size_t>(t * at.stride)));
}

// Pools as written by the GPU against pools written by ref::write_kv, both
// starting as 0xFF bytes (NaN): a slot one wrote and the other did not counts
// as non-finite; the written elements are compared.
Comparison compare_pools(const std::vector<unsigned char>& got_bytes, const std::vector<unsigned char>& want_bytes,
                         DType dtype) {
  const auto got = from_bytes(got_bytes, dtype);
  const auto want = from_bytes(want_bytes, dtype);
  std::vector<float> got_written, want_written;
  long long misplaced = 0;
  std::size_t first_misplaced = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (std::isnan(want[i]) != std::isnan(got[i])) {
      if (misplaced++ == 0) first_misplaced = i;
    } else if (!std::isnan(want[i])) {
      got_written.push_back(got[i]);
      want_written.push_back(want[i]);
    }
  }
  Comparison c = compare(got_written, want_written);
  if (misplaced > 0) {
    c.first_bad = c.non_finite > 0 ? std::min(c.first_bad, first_misplaced) : first_misplaced;
    c.non_finite += misplaced;
  }
  return c;
}

// Quantized pools whose keys went through RoPE on both sides: the rotated
// f32 keys agree to rounding, not always to the bit, so a code may move by
// one step (and a row's statistics by an ulp). Every written (slot, head) of
// got must dequantize to within one quantization step (plus an ulp) of want;
// unwritten bytes must be equal. Returns the rows outside that and counts
// the rows whose bytes differ at all.
struct QuantizedPoolComparison {
  long long rows = 0, rows_differing = 0, rows_outside = 0, stray_bytes = 0;
};
QuantizedPoolComparison compare_quantized_pools(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want,
                                                const ref::KvCacheLayer& layout, const std::vector<std::int64_t>& slots) {
  QuantizedPoolComparison c;
  std::vector<unsigned char> written(got.size(), 0);
  const ref::KvQuantBlockLayout block{layout.block_tokens, layout.kv_heads, layout.head_dim, layout.quant_bits};
  std::vector<float> a(layout.head_dim), b(layout.head_dim);
  for (const std::int64_t slot : slots) {
    const std::size_t start = std::size_t(slot) / layout.block_tokens * block.block_bytes();
    const std::size_t offset = std::size_t(slot) % layout.block_tokens;
    for (std::size_t head = 0; head < layout.kv_heads; ++head) {
      const std::size_t codes = start + block.codes_at(offset, head), params = start + block.params_at(offset, head);
      std::fill_n(written.begin() + std::ptrdiff_t(codes), block.row_code_bytes(), 1);
      std::fill_n(written.begin() + std::ptrdiff_t(params), 4, 1);
      ++c.rows;
      c.rows_differing += !std::equal(got.begin() + std::ptrdiff_t(codes),
                                      got.begin() + std::ptrdiff_t(codes + block.row_code_bytes()),
                                      want.begin() + std::ptrdiff_t(codes)) ||
                          std::memcmp(got.data() + params, want.data() + params, 4) != 0;
      ref::load_kv_head(layout, got.data(), std::size_t(slot), head, a.data());
      ref::load_kv_head(layout, want.data(), std::size_t(slot), head, b.data());
      const float step = (*std::max_element(b.begin(), b.end()) - *std::min_element(b.begin(), b.end())) /
                         float((1 << layout.quant_bits) - 1);
      bool inside = true;
      for (std::size_t d = 0; d < layout.head_dim; ++d)
        inside = inside && std::isfinite(a[d]) && std::fabs(a[d] - b[d]) <= 1.01f * step + 1e-6f * std::fabs(b[d]);
      c.rows_outside += !inside;
    }
  }
  for (std::size_t i = 0; i < got.size(); ++i) c.stray_bytes += !written[i] && got[i] != want[i];
  return c;
}

TEST_CASE("rope_and_write_kv") {
  auto rng = rng_for("rope_and_write_kv");
  struct Shape {
    int tokens, q_heads, kv_heads, head_dim;
    bool llama3;
    QkvLayout layout;
    int max_position;
  };
  const Shape shapes[] = {{1, 32, 8, 128, true, QkvLayout::fused, 8000},
                          {300, 32, 8, 128, true, QkvLayout::separate, 130000},
                          {17, 8, 8, 64, false, QkvLayout::fused, 4096},
                          {1000, 16, 2, 64, false, QkvLayout::separate, 1000},
                          {64, 32, 4, 128, false, QkvLayout::fused, 100000},
                          {33, 8, 2, 128, true, QkvLayout::unaligned, 9000},
                          {5, 4, 4, 64, false, QkvLayout::unaligned, 100}};
  const int block_tokens = 16;
  for (const DType dtype : all_dtypes) {
    const int vector_elements = 16 / static_cast<int>(ref::dtype_size(dtype));
    for (const Shape& shape : shapes) for (const int kv_bits : {0, 8, 4}) {
      if (kv_bits != 0 && !gpu::quantized_kv_supported(kv_bits, shape.head_dim, block_tokens, shape.kv_heads)) continue;
      ref::RopeParams rope_params;
      rope_params.head_dim = shape.head_dim;
      rope_params.theta = shape.llama3 ? 500000.0 : 10000.0;
      rope_params.scaling_type = shape.llama3 ? ref::RopeScalingType::llama3 : ref::RopeScalingType::none;
      const ref::RopeTable table = ref::make_rope_table(rope_params);

      const int hd = shape.head_dim;
      const int q_width = shape.q_heads * hd, kv_width = shape.kv_heads * hd;
      const std::size_t tokens = static_cast<std::size_t>(shape.tokens);
      const auto q = rounded(random_floats(rng, tokens * q_width, -2, 2), dtype);
      const auto k = rounded(random_floats(rng, tokens * kv_width, -2, 2), dtype);
      const auto v = rounded(random_floats(rng, tokens * kv_width, -2, 2), dtype);
      std::vector<std::int32_t> positions(tokens);
      std::uniform_int_distribution<int> pos_dist(0, shape.max_position);
      for (auto& p : positions) p = pos_dist(rng);
      // Slots: a random injective map into a pool with spare slots; token 0 is
      // a padding token (slot -1) when there are several.
      const int num_blocks = (shape.tokens + block_tokens - 1) / block_tokens + 3;
      const int num_slots = num_blocks * block_tokens;
      std::vector<std::int32_t> all_slots(num_slots);
      std::iota(all_slots.begin(), all_slots.end(), 0);
      std::shuffle(all_slots.begin(), all_slots.end(), rng);
      std::vector<std::int32_t> slots(all_slots.begin(), all_slots.begin() + shape.tokens);
      if (shape.tokens > 1) slots[0] = -1;

      // Device buffers: [0] holds q (and, fused, k and v too), [1] k, [2] v.
      // Elements outside the tensors' rows are random and must stay as they are.
      RowsInBuffer q_at{0, q_width, q_width}, k_at{0, kv_width, kv_width}, v_at{0, kv_width, kv_width};
      int k_buffer = 1, v_buffer = 2;
      switch (shape.layout) {
        case QkvLayout::fused:
          q_at.stride = k_at.stride = v_at.stride = q_width + 2 * kv_width;
          k_at.offset = std::size_t(q_width);
          v_at.offset = std::size_t(q_width + kv_width);
          k_buffer = v_buffer = 0;
          break;
        case QkvLayout::separate:
          q_at.stride += 2 * vector_elements;
          k_at.stride += vector_elements;
          v_at.stride += 3 * vector_elements;
          break;
        case QkvLayout::unaligned:
          q_at.stride += 1;
          k_at.offset = 1;
          k_at.stride += 3;
          v_at.stride += 1;
          break;
      }
      const RowsInBuffer* placed[3] = {&q_at, &k_at, &v_at};
      const int buffer_of[3] = {0, k_buffer, v_buffer};
      std::vector<float> images[3];
      for (int b = 0; b < 3; ++b) {
        std::size_t elements = 0;
        for (int tensor = 0; tensor < 3; ++tensor)
          if (buffer_of[tensor] == b)
            elements = std::max(elements, placed[tensor]->offset + tokens * std::size_t(placed[tensor]->stride));
        images[b] = rounded(random_floats(rng, elements, -3, 3), dtype);
      }
      place_rows(images[0], q_at, q, shape.tokens);
      place_rows(images[k_buffer], k_at, k, shape.tokens);
      place_rows(images[v_buffer], v_at, v, shape.tokens);

      // Reference: ref::apply_rope on f32 copies; ref::write_kv stores the
      // non-padding tokens, rounding to the dtype, into pools of 0xFF bytes.
      std::vector<float> want_q = q, rotated_k = k;
      ref::apply_rope(table, positions.data(), tokens, want_q.data(), shape.q_heads, rotated_k.data(), shape.kv_heads);
      std::vector<float> want_images[3] = {images[0], images[1], images[2]};
      place_rows(want_images[0], q_at, rounded(want_q, dtype), shape.tokens);
      const ref::KvQuantBlockLayout quant_block{std::size_t(block_tokens), std::size_t(shape.kv_heads),
                                                std::size_t(shape.head_dim), kv_bits};
      const std::size_t pool_bytes = kv_bits != 0 ? std::size_t(num_blocks) * quant_block.block_bytes()
                                                  : std::size_t(num_slots) * kv_width * ref::dtype_size(dtype);
      std::vector<unsigned char> want_k_pool(pool_bytes, 0xFF), want_v_pool(pool_bytes, 0xFF);
      std::vector<float> written_k, written_v;
      std::vector<std::int64_t> written_slots;
      for (std::size_t t = 0; t < tokens; ++t) {
        if (slots[t] < 0) continue;
        written_slots.push_back(slots[t]);
        written_k.insert(written_k.end(), rotated_k.begin() + t * kv_width, rotated_k.begin() + (t + 1) * kv_width);
        written_v.insert(written_v.end(), v.begin() + t * kv_width, v.begin() + (t + 1) * kv_width);
      }
      ref::KvCacheLayer ref_cache{want_k_pool.data(), want_v_pool.data(), dtype, std::size_t(num_blocks),
                                  std::size_t(block_tokens), std::size_t(shape.kv_heads), std::size_t(hd)};
      ref_cache.quant_bits = kv_bits;
      const std::int32_t ref_query_start[2] = {0, std::int32_t(written_slots.size())};
      ref::PagedKvStep ref_step;
      ref_step.num_sequences = 1;
      ref_step.query_start = ref_query_start;
      ref_step.block_tokens = std::size_t(block_tokens);
      ref_step.slot_mapping = written_slots.data();
      REQUIRE(ref::write_kv(ref_cache, ref_step, written_k.data(), written_v.data()) == ref::Status::ok);

      DeviceBuffer<unsigned char> d_buffers[3], k_pool(pool_bytes), v_pool(pool_bytes);
      for (int b = 0; b < 3; ++b) d_buffers[b].upload(to_bytes(images[b], dtype));
      DeviceBuffer<std::int32_t> d_pos, d_slots, flag(1);
      DeviceBuffer<float> d_inv_freq;
      d_pos.upload(positions);
      d_slots.upload(slots);
      d_inv_freq.upload(table.inv_freq);
      k_pool.poison();
      v_pool.poison();
      CUDA_OK(cudaMemset(flag.ptr, 0, 4));
      const std::size_t element = ref::dtype_size(dtype);
      gpu::RopeKvArgs args;
      args.dtype = dtype;
      args.num_tokens = shape.tokens;
      args.q_heads = shape.q_heads;
      args.kv_heads = shape.kv_heads;
      args.head_dim = hd;
      args.q = d_buffers[0].ptr + q_at.offset * element;
      args.q_row_stride = q_at.stride;
      args.k = d_buffers[k_buffer].ptr + k_at.offset * element;
      args.k_row_stride = k_at.stride;
      args.v = d_buffers[v_buffer].ptr + v_at.offset * element;
      args.v_row_stride = v_at.stride;
      args.positions = d_pos.ptr;
      args.inv_freq = d_inv_freq.ptr;
      args.slot_mapping = d_slots.ptr;
      args.k_pages = k_pool.ptr;
      args.v_pages = v_pool.ptr;
      args.num_slots = num_slots;
      args.error_flag = flag.ptr;
      args.kv_bits = kv_bits;
      args.block_tokens = block_tokens;
      LAUNCH_OK(gpu::rope_and_write_kv(args, nullptr));

      // q rotated in place; nothing else in the input buffers changes.
      std::vector<char> in_q(images[0].size(), 0);
      for (std::size_t t = 0; t < tokens; ++t)
        std::fill_n(in_q.begin() + static_cast<std::ptrdiff_t>(q_at.offset + t * std::size_t(q_at.stride)), q_width, 1);
      Comparison c;
      long long input_changed = 0;
      for (int b = 0; b < 3; ++b) {
        const auto got = from_bytes(d_buffers[b].download(), dtype);
        const Comparison cb = compare(got, want_images[b]);
        c.rel_err = std::max(c.rel_err, cb.rel_err);
        c.non_finite += cb.non_finite;
        for (std::size_t i = 0; i < got.size(); ++i) input_changed += (b > 0 || !in_q[i]) && got[i] != images[b][i];
      }
      // v is a copy (or the same quantization of the same values): bit-equal
      // to ref's pool, untouched slots included.
      const bool v_equal = v_pool.download() == want_v_pool;
      bool k_close = true;
      std::string k_detail;
      if (kv_bits == 0) {
        const Comparison ck = compare_pools(k_pool.download(), want_k_pool, dtype);
        c.rel_err = std::max(c.rel_err, ck.rel_err);
        c.non_finite += ck.non_finite;
      } else {
        const auto ck = compare_quantized_pools(k_pool.download(), want_k_pool, ref_cache, written_slots);
        k_close = ck.rows_outside == 0 && ck.stray_bytes == 0;
        k_detail = fmt(", k rows differing from ref %lld of %lld (%lld beyond one step, %lld stray bytes)",
                       ck.rows_differing, ck.rows, ck.rows_outside, ck.stray_bytes);
      }
      const std::string group = fmt("%s%s tokens=%d heads=%d/%d hd=%d %s %s", name_of(dtype),
                                    kv_bits == 8 ? " kv-int8" : kv_bits == 4 ? " kv-int4" : "", shape.tokens,
                                    shape.q_heads, shape.kv_heads, hd, shape.llama3 ? "llama3" : "plain",
                                    layout_name(shape.layout));
      const bool clean = v_equal && k_close && input_changed == 0 && flag.download()[0] == 0;
      report("rope_write_kv", group, c, tolerance_for(dtype),
             clean ? "(q, k pool, v pool)" + k_detail
                   : fmt("v pool equal %d, %lld input elements outside q changed, flag %d", int(v_equal), input_changed,
                         flag.download()[0]) + k_detail);
      if (!clean) {
        ++g_failed;
        CHECK(clean);
      }
    }
  }
  // A slot past the pool: flagged, nothing written out of bounds.
  {
    const int hd = 64, kv = 2, qh = 4, row = (qh + 2 * kv) * hd;
    DeviceBuffer<unsigned char> d_qkv, k_pool(16 * kv * hd * 2), v_pool(16 * kv * hd * 2);
    d_qkv.upload(to_bytes(random_floats(rng, 2 * row, -1, 1), DType::bf16));
    DeviceBuffer<std::int32_t> d_pos, d_slots, flag(1);
    d_pos.upload({5, 6});
    d_slots.upload({3, 16});
    DeviceBuffer<float> d_inv;
    ref::RopeParams rp;
    rp.head_dim = hd;
    d_inv.upload(ref::make_rope_table(rp).inv_freq);
    CUDA_OK(cudaMemset(flag.ptr, 0, 4));
    gpu::RopeKvArgs args;
    args.dtype = DType::bf16;
    args.num_tokens = 2;
    args.q_heads = qh;
    args.kv_heads = kv;
    args.head_dim = hd;
    args.q = d_qkv.ptr;
    args.q_row_stride = row;
    args.k = d_qkv.ptr + qh * hd * 2;
    args.k_row_stride = row;
    args.v = d_qkv.ptr + (qh + kv) * hd * 2;
    args.v_row_stride = row;
    args.positions = d_pos.ptr;
    args.inv_freq = d_inv.ptr;
    args.slot_mapping = d_slots.ptr;
    args.k_pages = k_pool.ptr;
    args.v_pages = v_pool.ptr;
    args.num_slots = 16;
    args.error_flag = flag.ptr;
    LAUNCH_OK(gpu::rope_and_write_kv(args, nullptr));
    const int flag_value = flag.download()[0];
    report_bool("rope_write_kv", "slot past the pool -> error flag", flag_value == static_cast<int>(ref::Status::slot_out_of_range),
                fmt("flag=%d", flag_value));
    // Refused before launching: an odd head_dim, a row stride shorter than its heads.
    gpu::RopeKvArgs odd = args;
    odd.head_dim = 63;
    CHECK(gpu::rope_and_write_kv(odd, nullptr) == cudaErrorInvalidValue);
    gpu::RopeKvArgs short_rows = args;
    short_rows.k_row_stride = kv * hd - 1;
    CHECK(gpu::rope_and_write_kv(short_rows, nullptr) == cudaErrorInvalidValue);
  }
}

// ---- paged attention -----------------------------------------------------

struct SequenceSpec {
  int cached;
  int new_tokens;
};

struct AttentionCase {
  std::string name;
  DType dtype;
  int head_dim, kv_heads, group, block_tokens;
  std::vector<SequenceSpec> sequences;
  int force_splits = 0;
  bool fused_q = false;  // q read from a [tokens, (q_heads + 2 kv_heads) * hd] buffer
  int kv_bits = 0;       // 8 / 4: int8 / int4 pages (ref::store_kv_head writes them, both sides read the same bytes)
};

// Builds pools with shuffled blocks, random K/V for every context position and
// NaN everywhere else, runs ref once, then the GPU once per prefill choice
// (the plan's own kernel, or one forced: every form is tested on every case
// where it can run), and compares each with ref. One set of pools and one
// reference for all the choices: built per choice, the case ran ~1 s a check
// on the H100, nearly all of it on the host.
void run_attention_case(const AttentionCase& tc, std::mt19937_64& rng,
                        const std::vector<gpu::PrefillKernelChoice>& choices) {
  const int hd = tc.head_dim, kv = tc.kv_heads, qh = kv * tc.group, bt = tc.block_tokens;
  const int num_seqs = static_cast<int>(tc.sequences.size());
  std::vector<std::int32_t> query_start(num_seqs + 1, 0), context_lens(num_seqs);
  int max_blocks = 1, total_blocks = 0, max_query = 0, max_context = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const auto& s = tc.sequences[i];
    query_start[i + 1] = query_start[i] + s.new_tokens;
    context_lens[i] = s.cached + s.new_tokens;
    const int blocks = (context_lens[i] + bt - 1) / bt;
    max_blocks = std::max(max_blocks, blocks);
    total_blocks += blocks;
    max_query = std::max(max_query, s.new_tokens);
    max_context = std::max(max_context, context_lens[i]);
  }
  const int num_tokens = query_start[num_seqs];
  const int num_blocks = total_blocks + 5;
  std::vector<std::int32_t> block_ids(num_blocks);
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::shuffle(block_ids.begin(), block_ids.end(), rng);
  std::vector<std::int32_t> block_tables(static_cast<std::size_t>(num_seqs) * max_blocks, -1);
  std::vector<std::int64_t> slot_mapping(num_tokens);
  const std::size_t token_elements = static_cast<std::size_t>(kv) * hd;
  const std::size_t pool_elements = static_cast<std::size_t>(num_blocks) * bt * token_elements;
  const std::uint16_t nan_bits = tc.dtype == DType::bf16 ? 0x7FC0 : 0x7E00;
  std::vector<std::uint16_t> k_pool(pool_elements, nan_bits), v_pool(pool_elements, nan_bits);
  // Quantized pages: every byte 0xFF (NaN scales) where nothing was stored.
  ref::KvCacheLayer quantized{nullptr, nullptr, tc.dtype, static_cast<std::size_t>(num_blocks),
                              static_cast<std::size_t>(bt), static_cast<std::size_t>(kv), static_cast<std::size_t>(hd)};
  quantized.quant_bits = tc.kv_bits;
  std::vector<unsigned char> k_quantized, v_quantized;
  if (tc.kv_bits != 0) {
    k_quantized.assign(num_blocks * ref::kv_pool_block_bytes(quantized), 0xFF);
    v_quantized.assign(k_quantized.size(), 0xFF);
  }
  std::vector<float> k_head(hd), v_head(hd);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const auto to16 = [&](float x) { return tc.dtype == DType::bf16 ? ref::f32_to_bf16(x) : ref::f32_to_f16(x); };
  int next_block = 0;
  for (int i = 0; i < num_seqs; ++i) {
    const int blocks = (context_lens[i] + bt - 1) / bt;
    for (int b = 0; b < blocks; ++b) block_tables[static_cast<std::size_t>(i) * max_blocks + b] = block_ids[next_block++];
    for (int p = 0; p < context_lens[i]; ++p) {
      const std::int64_t slot = static_cast<std::int64_t>(block_tables[static_cast<std::size_t>(i) * max_blocks + p / bt]) * bt + p % bt;
      if (tc.kv_bits == 0) {
        for (std::size_t e = 0; e < token_elements; ++e) {
          k_pool[slot * token_elements + e] = to16(dist(rng) * 2.0f);
          v_pool[slot * token_elements + e] = to16(dist(rng));
        }
      } else {
        for (int g = 0; g < kv; ++g) {
          for (int d = 0; d < hd; ++d) {
            k_head[d] = dist(rng) * 2.0f;
            v_head[d] = dist(rng);
          }
          if (p % 97 == 5) std::fill(k_head.begin(), k_head.end(), 0.75f);  // a constant row: scale 0
          ref::store_kv_head(quantized, k_quantized.data(), std::size_t(slot), std::size_t(g), k_head.data());
          ref::store_kv_head(quantized, v_quantized.data(), std::size_t(slot), std::size_t(g), v_head.data());
        }
      }
      const int cached = context_lens[i] - tc.sequences[i].new_tokens;
      if (p >= cached) slot_mapping[query_start[i] + p - cached] = slot;
    }
  }
  const int q_row = tc.fused_q ? (qh + 2 * kv) * hd : qh * hd;
  std::vector<float> q_full = rounded(random_floats(rng, static_cast<std::size_t>(num_tokens) * q_row, -1.5f, 1.5f), tc.dtype);
  std::vector<float> q(static_cast<std::size_t>(num_tokens) * qh * hd);
  for (int t = 0; t < num_tokens; ++t) {
    std::copy(q_full.begin() + static_cast<std::size_t>(t) * q_row, q_full.begin() + static_cast<std::size_t>(t) * q_row + qh * hd,
              q.begin() + static_cast<std::size_t>(t) * qh * hd);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  ref::KvCacheLayer layer{k_pool.data(), v_pool.data(), tc.dtype, static_cast<std::size_t>(num_blocks),
                          static_cast<std::size_t>(bt), static_cast<std::size_t>(kv), static_cast<std::size_t>(hd)};
  if (tc.kv_bits != 0) {
    layer = quantized;
    layer.k_pages = k_quantized.data();
    layer.v_pages = v_quantized.data();
  }
  ref::PagedKvStep step;
  step.num_sequences = num_seqs;
  step.query_start = query_start.data();
  step.context_lens = context_lens.data();
  step.block_tables = block_tables.data();
  step.max_blocks_per_sequence = max_blocks;
  step.block_tokens = bt;
  step.slot_mapping = slot_mapping.data();
  std::vector<float> want(q.size());
  REQUIRE(ref::paged_attention(layer, step, q.data(), qh, scale, want.data()) == ref::Status::ok);

  // The step's inputs on the device, read by every choice.
  DeviceBuffer<unsigned char> d_k, d_v;
  const auto bytes_of = [](const std::vector<std::uint16_t>& v) {
    std::vector<unsigned char> bytes(v.size() * 2);
    std::memcpy(bytes.data(), v.data(), bytes.size());
    return bytes;
  };
  d_k.upload(tc.kv_bits != 0 ? k_quantized : bytes_of(k_pool));
  d_v.upload(tc.kv_bits != 0 ? v_quantized : bytes_of(v_pool));
  DeviceBuffer<unsigned char> d_q;
  d_q.upload(to_bytes(q_full, tc.dtype));
  DeviceBuffer<std::int32_t> d_qs, d_ctx, d_bt;
  d_qs.upload(query_start);
  d_ctx.upload(context_lens);
  d_bt.upload(block_tables);
  const gpu::PagedKvPools pools{d_k.ptr, d_v.ptr, tc.dtype, num_blocks, bt, kv, hd, tc.kv_bits};
  const gpu::PagedAttentionBatch batch{num_seqs, d_qs.ptr, d_ctx.ptr, d_bt.ptr, max_blocks};
  gpu::AttentionProblem problem;
  problem.dtype = tc.dtype;
  problem.head_dim = hd;
  problem.q_heads = qh;
  problem.kv_heads = kv;
  problem.num_sequences = num_seqs;
  problem.max_query_len = max_query;
  problem.max_context_len = max_context;
  problem.num_sms = g_num_sms;
  problem.force_splits = tc.force_splits;
  problem.kv_bits = tc.kv_bits;
  problem.compute_capability = g_compute_capability;

  for (const gpu::PrefillKernelChoice choice : choices) {
    problem.prefill_kernel = choice;
    // The prefill grid's bound: from the sequences alone, from the step's token
    // count, or too small on purpose (1 token: the kernel must loop over the rest).
    const int bound_mode = std::uniform_int_distribution<int>(0, 2)(rng);
    problem.max_tokens = bound_mode == 0 ? 0 : (bound_mode == 1 ? num_tokens : 1);
    const gpu::AttentionPlan plan = gpu::plan_paged_attention(problem);
    REQUIRE_MESSAGE(plan.valid, plan.error);

    DeviceBuffer<unsigned char> d_out(q.size() * 2), workspace(std::max<std::size_t>(plan.workspace_bytes, 1));
    d_out.poison();
    workspace.poison();
    LAUNCH_OK(gpu::paged_attention(plan, pools, batch, d_q.ptr, q_row, scale, d_out.ptr, qh * hd, workspace.ptr,
                                   workspace.bytes(), nullptr));
    const auto got = from_bytes(d_out.download(), tc.dtype);
    report("paged_attention",
           fmt("%s %s%s hd=%d heads=%d/%d bt=%d seqs=%d tokens=%d ctx<=%d grid<=%s", tc.name.c_str(), name_of(tc.dtype),
               tc.kv_bits == 8 ? " kv-int8" : tc.kv_bits == 4 ? " kv-int4" : "", hd,
               qh, kv, bt, num_seqs, num_tokens, max_context,
               bound_mode == 0 ? "seqs" : (bound_mode == 1 ? "tokens" : "1")),
           compare(got, want), 1e-2);
    std::printf("       plan: %s\n", plan.describe().c_str());
    if (plan.run_decode && plan.run_prefill) {
      // The same step with prefill on a side stream beside decode.
      gpu::SideStream side;
      CUDA_OK(cudaStreamCreateWithFlags(&side.stream, cudaStreamNonBlocking));
      CUDA_OK(cudaEventCreateWithFlags(&side.fork, cudaEventDisableTiming));
      CUDA_OK(cudaEventCreateWithFlags(&side.join, cudaEventDisableTiming));
      cudaStream_t main_stream = nullptr;
      CUDA_OK(cudaStreamCreateWithFlags(&main_stream, cudaStreamNonBlocking));
      d_out.poison();
      workspace.poison();
      // The poison is on the legacy stream, which a non-blocking one does not wait for.
      CUDA_OK(cudaDeviceSynchronize());
      LAUNCH_OK(gpu::paged_attention(plan, pools, batch, d_q.ptr, q_row, scale, d_out.ptr, qh * hd, workspace.ptr,
                                     workspace.bytes(), main_stream, &side));
      CUDA_OK(cudaStreamSynchronize(main_stream));
      report("paged_attention", fmt("%s %s, prefill on a side stream", tc.name.c_str(), name_of(tc.dtype)),
             compare(from_bytes(d_out.download(), tc.dtype), want), 1e-2);
      cudaStreamDestroy(main_stream);
      cudaStreamDestroy(side.stream);
      cudaEventDestroy(side.fork);
      cudaEventDestroy(side.join);
    }
  }
}

std::vector<SequenceSpec> decode_batch(std::mt19937_64& rng, int count, int min_ctx, int max_ctx) {
  std::uniform_int_distribution<int> ctx(min_ctx, max_ctx);
  std::vector<SequenceSpec> s(count);
  for (auto& x : s) x = {ctx(rng) - 1, 1};
  return s;
}

TEST_CASE("paged_attention") {
  auto rng = rng_for("paged_attention");
  std::vector<AttentionCase> cases;
  for (const DType dtype : half_dtypes) {
    // decode: short contexts (one chunk, written directly), GQA 4 and 8
    cases.push_back({"decode", dtype, 128, 8, 4, 16, decode_batch(rng, 16, 1, 600)});
    cases.push_back({"decode", dtype, 64, 4, 8, 64, decode_batch(rng, 9, 1, 300)});
    // decode, no GQA, forced split into 7 chunks (several of them partial)
    cases.push_back({"decode-split7", dtype, 64, 8, 1, 32, decode_batch(rng, 5, 200, 1500), 7});
    // long contexts: automatic split-K
    cases.push_back({"decode-long", dtype, 128, 8, 4, 64, {{8191 + 37, 1}, {9000, 1}}});
    cases.push_back({"decode-long", dtype, 128, 2, 8, 16, {{16383, 1}}});
    // prefill chunks without and with cached prefixes
    cases.push_back({"prefill", dtype, 128, 2, 4, 16, {{0, 1}, {0, 77}, {0, 300}}});
    cases.push_back({"prefill-cached", dtype, 64, 4, 1, 32, {{500, 129}, {31, 2}, {1, 64}}});
    // mixed prefill + decode, partially filled last blocks, fused-QKV q rows
    {
      AttentionCase mixed{"mixed", dtype, 128, 8, 4, 16, decode_batch(rng, 6, 1, 2000)};
      mixed.sequences.push_back({0, 200});
      mixed.sequences.push_back({333, 65});
      mixed.sequences.push_back({1000, 1});
      mixed.fused_q = true;
      cases.push_back(mixed);
    }
    {
      AttentionCase mixed{"mixed", dtype, 64, 2, 8, 64, decode_batch(rng, 4, 100, 5000)};
      mixed.sequences.insert(mixed.sequences.begin() + 2, {700, 333});
      cases.push_back(mixed);
    }
  }
  // one long prefill chunk (tokens > 1000), and a group too large for the
  // decode tile (the prefill kernel takes the decode tokens)
  cases.push_back({"prefill-1k", DType::bf16, 128, 2, 4, 64, {{100, 1100}}});
  cases.push_back({"group32", DType::bf16, 64, 1, 32, 16, {{40, 1}, {0, 50}, {3000, 1}}});
  // int8 / int4 pages: every case again over quantized pages (block_tokens x
  // kv_heads a multiple of 4, which all of them are).
  const std::size_t plain_cases = cases.size();
  for (const int bits : {8, 4})
    for (std::size_t i = 0; i < plain_cases; ++i) {
      AttentionCase quantized = cases[i];
      quantized.kv_bits = bits;
      cases.push_back(quantized);
    }
  for (const auto& c : cases) {
    using gpu::PrefillKernelChoice;
    std::vector<PrefillKernelChoice> choices{PrefillKernelChoice::automatic, PrefillKernelChoice::mma_sync_64,
                                             PrefillKernelChoice::mma_sync_128};
    if (g_compute_capability == 90 && c.head_dim == 128) {
      choices.push_back(PrefillKernelChoice::wgmma_128);
      choices.push_back(PrefillKernelChoice::wgmma_ws);
    }
    run_attention_case(c, rng, choices);
  }
}

// ---- W4A16 GEMM (AutoAWQ weights) -----------------------------------------

// An AWQ layer made from chosen codes, zero points and scales (what each case
// varies), packed as a checkpoint holds it.
struct AwqLayerData {
  std::vector<std::int32_t> qweight, qzeros;
  std::vector<std::uint16_t> scales;
  ref::AwqWeights view(int n, int k, int group) const {
    return {qweight.data(), qzeros.data(), scales.data(), std::size_t(k), std::size_t(n), std::size_t(group)};
  }
};

enum class AwqValues { random, codes_all_zero, codes_all_fifteen, all_equal, zero_scales, tiny_scales };

AwqLayerData make_awq_layer(std::mt19937_64& rng, int n, int k, int group, AwqValues values) {
  const int groups = k / group;
  std::uniform_int_distribution<int> code(0, 15);
  std::vector<std::uint8_t> q(std::size_t(k) * n), z(std::size_t(groups) * n);
  for (auto& c : q) c = std::uint8_t(code(rng));
  for (auto& c : z) c = std::uint8_t(code(rng));
  auto s = random_floats(rng, std::size_t(groups) * n, 0.001f, 0.02f);
  switch (values) {
    case AwqValues::random: break;
    case AwqValues::codes_all_zero:  // w = -z s: the most negative weights with z = 15
      std::fill(q.begin(), q.end(), 0);
      std::fill(z.begin(), z.end(), 15);
      break;
    case AwqValues::codes_all_fifteen:
      std::fill(q.begin(), q.end(), 15);
      std::fill(z.begin(), z.end(), 0);
      break;
    case AwqValues::all_equal:  // one weight everywhere
      std::fill(q.begin(), q.end(), 9);
      std::fill(z.begin(), z.end(), 4);
      std::fill(s.begin(), s.end(), 0.0078125f);
      break;
    case AwqValues::zero_scales:  // every other group contributes nothing
      for (int g = 0; g < groups; g += 2) std::fill(s.begin() + std::size_t(g) * n, s.begin() + std::size_t(g + 1) * n, 0.0f);
      break;
    case AwqValues::tiny_scales:  // f16 subnormals
      for (float& v : s) v *= 1e-4f;
      break;
  }
  AwqLayerData layer;
  layer.qweight.resize(std::size_t(k) * n / 8);
  layer.qzeros.resize(std::size_t(groups) * n / 8);
  ref::awq_pack(q.data(), std::size_t(k), std::size_t(n), layer.qweight.data());
  ref::awq_pack(z.data(), std::size_t(groups), std::size_t(n), layer.qzeros.data());
  layer.scales.resize(s.size());
  ref::convert_from_f32(s.data(), s.size(), layer.scales.data(), DType::f16);
  return layer;
}

// The repacked layer in device memory, with its split counters (room for
// the bench's sweep, which splits up to 8 CTAs an SM).
struct AwqDeviceLayer {
  DeviceBuffer<std::uint32_t> codes, zeros, counters;
  DeviceBuffer<std::uint16_t> scales;
  gpu::AwqDeviceWeights weights;
  explicit AwqDeviceLayer(const ref::AwqWeights& layer) {
    const gpu::AwqRepacked r = gpu::awq_repack(layer);
    codes.upload(r.codes);
    zeros.upload(r.zeros);
    scales.upload(r.scales);
    weights = {codes.ptr, zeros.ptr, scales.ptr, r.in_features, r.out_features, r.group_size, r.padded_in};
    counters.upload(std::vector<std::uint32_t>(
        std::size_t(std::max(gpu::awq_gemm_counters(weights, 4096), 8 * g_num_sms * 2)), 0u));
  }
  int counter_count() const { return int(counters.count); }
  // Every call leaves the counters at zero (the next call depends on it).
  bool counters_clear() const {
    const auto left = counters.download();
    return std::all_of(left.begin(), left.end(), [](std::uint32_t c) { return c == 0; });
  }
};

// awq_gemm against ref::awq_gemm on the same x (rounded to dtype) and the same
// packed weights. The GPU forms the same exact products and differs only in
// the order of f32 additions, then rounds once to dtype: the tolerance is
// that rounding (bf16 ~1e-3 rms, f16 ~1.5e-4).
TEST_CASE("awq_gemm") {
  auto rng = rng_for("awq_gemm");
  struct Case {
    int m, n, k, group;
    AwqValues values;
    const char* what;
  };
  // Llama-3-8B's QKV and down at decode sizes, a prefill-sized product, row
  // counts either side of the kernel's 16 / 32 / 64-row tiles, in_features
  // not a multiple of 128 (padded k-block), out_features not a multiple of
  // 64 (partial CTA), and the adversarial groups.
  const Case cases[] = {
      {1, 6144, 4096, 128, AwqValues::random, "qkv"},
      {1, 4096, 14336, 128, AwqValues::random, "down"},
      {4, 4096, 4096, 64, AwqValues::random, "o_proj"},
      {16, 1024, 1024, 32, AwqValues::random, "rows=16"},
      {17, 520, 384, 128, AwqValues::random, "rows=17"},
      {12, 4096, 4096, 128, AwqValues::random, "decode, two row groups"},
      {32, 6144, 4096, 128, AwqValues::random, "decode, four row groups"},
      {16, 520, 192, 64, AwqValues::random, "decode g64 padded, two row groups"},
      {24, 256, 1024, 128, AwqValues::zero_scales, "decode, zero scales"},
      {48, 4096, 4096, 128, AwqValues::random, "decode, eight row groups, x staged"},
      {64, 520, 384, 128, AwqValues::random, "decode, 64 rows, partial CTA"},
      {200, 4096, 1024, 128, AwqValues::random, "decode, four row blocks"},
      {33, 264, 256, 64, AwqValues::random, "rows=33"},
      {300, 1032, 640, 128, AwqValues::random, "rows=300"},
      {3, 72, 192, 64, AwqValues::random, "k=192 padded"},
      {9, 136, 96, 32, AwqValues::random, "k=96 padded"},
      {2, 512, 512, 128, AwqValues::codes_all_zero, "q=0 z=15"},
      {70, 512, 512, 32, AwqValues::codes_all_fifteen, "q=15 z=0"},
      {5, 256, 1024, 128, AwqValues::all_equal, "all equal"},
      {40, 256, 1024, 64, AwqValues::zero_scales, "zero scales"},
      {1, 256, 1024, 128, AwqValues::tiny_scales, "subnormal scales"},
  };
  for (const DType dtype : half_dtypes) {
    for (const Case& c : cases) {
      const AwqLayerData layer = make_awq_layer(rng, c.n, c.k, c.group, c.values);
      const ref::AwqWeights view = layer.view(c.n, c.k, c.group);
      // x rows with a wider stride than k, as a model's views may have.
      const int x_stride = c.k + 8;
      const auto x = rounded(random_floats(rng, std::size_t(c.m) * x_stride, -1, 1), dtype);
      std::vector<float> want(std::size_t(c.m) * c.n), scratch(ref::awq_gemm_workspace_floats(view));
      ref::awq_gemm(view, x.data(), std::size_t(x_stride), std::size_t(c.m), want.data(), std::size_t(c.n),
                    scratch.data());
      AwqDeviceLayer device(view);
      DeviceBuffer<unsigned char> d_x, d_y(want.size() * ref::dtype_size(dtype));
      DeviceBuffer<unsigned char> d_ws(std::max<std::size_t>(gpu::awq_gemm_workspace_bytes(device.weights, c.m), 1));
      d_x.upload(to_bytes(x, dtype));
      // Twice: the second call finds the split counters the first left.
      for (int call = 0; call < 2; ++call) {
        d_y.poison();
        LAUNCH_OK(gpu::awq_gemm(device.weights, d_x.ptr, x_stride, dtype, c.m, d_y.ptr, c.n, d_ws.ptr, d_ws.bytes(),
                                device.counters.ptr, device.counter_count(), nullptr));
        report("awq_gemm", fmt("%s m=%d n=%d k=%d g%d %s%s", name_of(dtype), c.m, c.n, c.k, c.group, c.what,
                               call == 1 ? " again" : ""),
               compare(from_bytes(d_y.download(), dtype), want), dtype == DType::bf16 ? 3e-3 : 4e-4);
      }
      report_bool("awq_gemm", fmt("%s m=%d n=%d %s: split counters back at zero", name_of(dtype), c.m, c.n, c.what),
                  device.counters_clear(), "counters left set");
    }
  }
  // awq_dequantize: ref::awq_dequantize's floats rounded to dtype, bit for bit
  // (a padded k-block with group 64, and group 32).
  for (const DType dtype : half_dtypes)
    for (const auto [n, k, group] : {std::array<int, 3>{264, 192, 64}, std::array<int, 3>{128, 512, 32}}) {
      const AwqLayerData layer = make_awq_layer(rng, n, k, group, AwqValues::random);
      const ref::AwqWeights view = layer.view(n, k, group);
      std::vector<float> dense(std::size_t(n) * k);
      ref::awq_dequantize(view, dense.data());
      const auto want = to_bytes(dense, dtype);
      AwqDeviceLayer device(view);
      DeviceBuffer<unsigned char> d_w(want.size());
      d_w.poison();
      LAUNCH_OK(gpu::awq_dequantize(device.weights, dtype, d_w.ptr, nullptr));
      const auto got = d_w.download();
      long long differ = 0;
      for (std::size_t i = 0; i < got.size(); ++i) differ += got[i] != want[i];
      report_bool("awq_gemm", fmt("dequantize %s n=%d k=%d g%d", name_of(dtype), n, k, group), differ == 0,
                  fmt("%lld bytes differ", differ));
    }
  // The layout read back: every code where awq_repack says it put it.
  {
    const AwqLayerData layer = make_awq_layer(rng, 24, 160, 32, AwqValues::random);
    const ref::AwqWeights view = layer.view(24, 160, 32);
    const gpu::AwqRepacked r = gpu::awq_repack(view);
    long long wrong = 0;
    for (int k = 0; k < 160; ++k)
      for (int n = 0; n < 24; ++n) wrong += gpu::awq_repacked_code(r, k, n) != ref::awq_code(view.qweight, 24, k, n);
    report_bool("awq_gemm", "repacked codes read back", wrong == 0, fmt("%lld misplaced", wrong));
  }
  // The decode kernel's two ways of adding k splits (the last CTA through
  // the workspace; on sm_90 the splits' cluster through shared memory) add
  // in the same order: the same bytes.
  // (Shapes whose splits are 2-8, so a cluster takes them.)
  for (const auto [m, n, k] : {std::array<int, 3>{1, 14336, 4096}, std::array<int, 3>{6, 1032, 2048},
                               std::array<int, 3>{24, 4096, 4096}, std::array<int, 3>{64, 520, 1024},
                               std::array<int, 3>{150, 2048, 4096}}) {
    const AwqLayerData layer = make_awq_layer(rng, n, k, 128, AwqValues::random);
    AwqDeviceLayer device(layer.view(n, k, 128));
    DeviceBuffer<unsigned char> d_x, d_last(std::size_t(m) * n * 2), d_cluster(std::size_t(m) * n * 2);
    d_x.upload(to_bytes(random_floats(rng, std::size_t(m) * k, -1, 1), DType::bf16));
    DeviceBuffer<unsigned char> d_ws(std::size_t(16) * m * n * 4);
    const int splits = k >= 4096 ? 5 : 3;
    d_last.poison();
    d_cluster.poison();
    LAUNCH_OK(gpu::awq_gemm_sweep(device.weights, d_x.ptr, m, d_last.ptr, d_ws.ptr, d_ws.bytes(), device.counters.ptr,
                                  device.counter_count(), splits, false, nullptr));
    LAUNCH_OK(gpu::awq_gemm_sweep(device.weights, d_x.ptr, m, d_cluster.ptr, d_ws.ptr, d_ws.bytes(),
                                  device.counters.ptr, device.counter_count(), splits, true, nullptr));
    const auto last = d_last.download(), cluster = d_cluster.download();
    long long differ = 0;
    for (std::size_t i = 0; i < last.size(); ++i) differ += last[i] != cluster[i];
    report_bool("awq_gemm", fmt("decode splits m=%d n=%d k=%d: cluster and last-CTA sums equal", m, n, k),
                differ == 0, fmt("%lld bytes differ", differ));
  }
  // Refusals: a workspace too small for a split call, misaligned x, f32.
  {
    const AwqLayerData layer = make_awq_layer(rng, 4096, 4096, 128, AwqValues::random);
    AwqDeviceLayer device(layer.view(4096, 4096, 128));
    DeviceBuffer<unsigned char> any(4096 * 2 * 4 + 64);
    const std::size_t needed = gpu::awq_gemm_workspace_bytes(device.weights, 1);
    CHECK(needed > 0);  // one row of a 4096-wide layer is split across CTAs
    const int counters = device.counter_count();
    CHECK(gpu::awq_gemm(device.weights, any.ptr, 4096, DType::bf16, 1, any.ptr, 4096, any.ptr, needed - 1,
                        device.counters.ptr, counters, nullptr) == cudaErrorInvalidValue);
    CHECK(gpu::awq_gemm(device.weights, any.ptr, 4096, DType::bf16, 1, any.ptr, 4096, any.ptr, needed, nullptr, 0,
                        nullptr) == cudaErrorInvalidValue);
    CHECK(gpu::awq_gemm(device.weights, any.ptr + 2, 4096, DType::bf16, 1, any.ptr, 4096, nullptr, 0,
                        device.counters.ptr, counters, nullptr) == cudaErrorInvalidValue);
    CHECK(gpu::awq_gemm(device.weights, any.ptr, 4096, DType::f32, 1, any.ptr, 4096, nullptr, 0, device.counters.ptr,
                        counters, nullptr) == cudaErrorInvalidValue);
  }
}

// awq_gemm_silu_mul on [gate | up] layers: ref::awq_gemm, each product
// rounded to dtype (as the unfused path stores it), then ref::silu_and_mul;
// one and several k splits, one to four row groups, a padded k-block, a
// layer of one value. The decode kernel only (n a multiple of 128).
TEST_CASE("awq_gemm_silu_mul") {
  auto rng = rng_for("awq_gemm_silu_mul");
  struct Case {
    int m, n, k, group;
    AwqValues values;
  };
  for (const DType dtype : half_dtypes)
    for (const Case& c : {Case{1, 28672, 4096, 128, AwqValues::random}, Case{8, 256, 1024, 64, AwqValues::random},
                          Case{32, 28672, 4096, 128, AwqValues::random}, Case{13, 1024, 512, 64, AwqValues::random},
                          Case{64, 1024, 512, 128, AwqValues::random}, Case{130, 2048, 1024, 128, AwqValues::random},
                          Case{3, 1024, 192, 64, AwqValues::random}, Case{5, 512, 512, 128, AwqValues::all_equal}}) {
      const AwqLayerData layer = make_awq_layer(rng, c.n, c.k, c.group, c.values);
      const ref::AwqWeights view = layer.view(c.n, c.k, c.group);
      const auto x = rounded(random_floats(rng, std::size_t(c.m) * c.k, -1, 1), dtype);
      std::vector<float> sums(std::size_t(c.m) * c.n), scratch(ref::awq_gemm_workspace_floats(view));
      ref::awq_gemm(view, x.data(), std::size_t(c.k), std::size_t(c.m), sums.data(), std::size_t(c.n), scratch.data());
      const std::vector<float> stored = rounded(sums, dtype);
      std::vector<float> want(std::size_t(c.m) * c.n / 2);
      ref::silu_and_mul(stored.data(), std::size_t(c.m), std::size_t(c.n / 2), want.data());
      AwqDeviceLayer device(view);
      REQUIRE(gpu::awq_gemm_fuses_silu_mul(device.weights, c.m));
      DeviceBuffer<unsigned char> d_x, d_y(want.size() * ref::dtype_size(dtype));
      DeviceBuffer<unsigned char> d_ws(std::max<std::size_t>(gpu::awq_gemm_workspace_bytes(device.weights, c.m), 1));
      d_x.upload(to_bytes(x, dtype));
      for (int call = 0; call < 2; ++call) {
        d_y.poison();
        LAUNCH_OK(gpu::awq_gemm_silu_mul(device.weights, d_x.ptr, c.k, dtype, c.m, d_y.ptr, c.n / 2, d_ws.ptr,
                                         d_ws.bytes(), device.counters.ptr, device.counter_count(), nullptr));
        report("awq_gemm", fmt("silu_mul %s m=%d n=%d k=%d g%d%s", name_of(dtype), c.m, c.n, c.k, c.group,
                               call == 1 ? " again" : ""),
               compare(from_bytes(d_y.download(), dtype), want), dtype == DType::bf16 ? 4e-3 : 6e-4);
      }
      report_bool("awq_gemm", fmt("silu_mul %s m=%d n=%d: split counters back at zero", name_of(dtype), c.m, c.n),
                  device.counters_clear(), "counters left set");
    }
  // Where the decode kernel does not take the rows or the shape: refused.
  {
    const AwqLayerData layer = make_awq_layer(rng, 192, 256, 64, AwqValues::random);
    AwqDeviceLayer narrow(layer.view(192, 256, 64));  // 192 columns: not a multiple of 128
    CHECK_FALSE(gpu::awq_gemm_fuses_silu_mul(narrow.weights, 1));
    const AwqLayerData wide = make_awq_layer(rng, 256, 256, 128, AwqValues::random);
    AwqDeviceLayer device(wide.view(256, 256, 128));
    const int direct = gpu::awq_gemm_direct_rows(device.weights);
    CHECK(direct == 192);
    CHECK(gpu::awq_gemm_fuses_silu_mul(device.weights, direct));
    CHECK_FALSE(gpu::awq_gemm_fuses_silu_mul(device.weights, direct + 1));
    CHECK(gpu::awq_gemm_direct_rows(narrow.weights) == 64);
    CHECK(gpu::awq_gemm_fuses_silu_mul(narrow.weights, 1) == false);
    DeviceBuffer<unsigned char> any(256 * std::size_t(direct + 8) * 4 + 64);
    CHECK(gpu::awq_gemm_silu_mul(device.weights, any.ptr, 256, DType::bf16, direct + 1, any.ptr, 128, any.ptr,
                                 any.bytes(), device.counters.ptr, device.counter_count(),
                                 nullptr) == cudaErrorInvalidValue);
    CHECK(gpu::awq_gemm_silu_mul(narrow.weights, any.ptr, 256, DType::bf16, 1, any.ptr, 96, any.ptr, any.bytes(),
                                 narrow.counters.ptr, narrow.counter_count(), nullptr) == cudaErrorInvalidValue);
  }
}

// The AWQ search's element-wise parts (plugins/awq's CUDA search) equal
// ref's bit for bit: the scaled rounding error, the clip candidates' errors,
// and column sums of squares against a double loop. Weights include rows of
// one value (max == min), zeros, and outliers that clipping acts on.
TEST_CASE("awq_search pieces") {
  auto rng = rng_for("awq_search pieces");
  struct Shape { int out, in, group; };
  for (const Shape sh : {Shape{24, 256, 128}, Shape{16, 192, 64}, Shape{8, 96, 32}}) {
    std::vector<float> w = random_floats(rng, std::size_t(sh.out) * sh.in, -0.05f, 0.05f);
    for (int i = 0; i < sh.in; ++i) w[std::size_t(1) * sh.in + i] = 0.01f;  // row 1: one value
    for (int i = 0; i < sh.in; ++i) w[std::size_t(2) * sh.in + i] = 0.0f;   // row 2: zeros
    for (int o = 3; o < sh.out; o += 5) w[std::size_t(o) * sh.in + (o * 7) % sh.in] = 0.9f;  // outliers
    std::vector<float> s = random_floats(rng, std::size_t(sh.in), 0.2f, 4.0f);
    const std::string group = fmt("%d x %d, group %d", sh.out, sh.in, sh.group);

    std::vector<float> want(w.size());
    ref::awq_fake_quantize_scaled(w.data(), std::size_t(sh.out), std::size_t(sh.in), std::size_t(sh.group), s,
                                  want.data());
    for (std::size_t i = 0; i < w.size(); ++i) want[i] -= w[i];
    DeviceBuffer<float> dw, ds, de(w.size());
    dw.upload(w);
    ds.upload(s);
    LAUNCH_OK(gpu::awq_scaled_rounding_error(dw.ptr, dw.ptr, sh.out, sh.in, sh.group, ds.ptr, de.ptr, nullptr));
    const std::vector<float> got = de.download();
    long long differ = 0;
    for (std::size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
    report_bool("awq_search", "scaled rounding error " + group, differ == 0, fmt("%lld of %zu differ", differ, got.size()));

    const int grid = 20, steps = int(ref::awq_clip_steps(grid, 0.5)), groups = sh.in / sh.group;
    DeviceBuffer<float> dc(std::size_t(sh.out) * steps * sh.group);
    std::vector<float> clamped(std::size_t(sh.group)), error(std::size_t(sh.group));
    differ = 0;
    for (int g = 0; g < groups; ++g) {
      LAUNCH_OK(gpu::awq_clip_candidate_errors(dw.ptr, sh.out, sh.in, sh.group, g, steps, grid, dc.ptr, nullptr));
      const std::vector<float> candidates = dc.download();
      for (int o = 0; o < sh.out; ++o)
        for (int k = 0; k < steps; ++k) {
          ref::awq_clip_candidate(w.data() + std::size_t(o) * sh.in + std::size_t(g) * sh.group,
                                  std::size_t(sh.group), k, grid, clamped.data(), error.data());
          differ += std::memcmp(candidates.data() + (std::size_t(o) * steps + k) * sh.group, error.data(),
                                error.size() * sizeof(float)) != 0;
        }
    }
    report_bool("awq_search", "clip candidates " + group, differ == 0,
                fmt("%lld of %d candidate rows differ", differ, sh.out * steps * groups));
  }
  {
    const std::int64_t rows = 37, columns = 1000;
    const std::vector<float> y = random_floats(rng, std::size_t(rows * columns), -3.0f, 3.0f);
    DeviceBuffer<float> dy;
    dy.upload(y);
    DeviceBuffer<double> sums{static_cast<std::size_t>(columns)};
    LAUNCH_OK(gpu::column_sum_squares(dy.ptr, rows, columns, sums.ptr, nullptr));
    const std::vector<double> got = sums.download();
    long long differ = 0;
    for (std::int64_t j = 0; j < columns; ++j) {
      double want = 0.0;
      for (std::int64_t r = 0; r < rows; ++r) want += double(y[r * columns + j]) * double(y[r * columns + j]);
      differ += got[std::size_t(j)] != want;
    }
    report_bool("awq_search", "column sums of squares 37 x 1000", differ == 0, fmt("%lld differ", differ));
  }
  CHECK(gpu::awq_scaled_rounding_error(nullptr, nullptr, 8, 100, 128, nullptr, nullptr, nullptr) ==
        cudaErrorInvalidValue);
  CHECK(gpu::awq_clip_candidate_errors(nullptr, 8, 256, 128, 2, 10, 20, nullptr, nullptr) == cudaErrorInvalidValue);
}

// ---- quantized KV stores ---------------------------------------------------

// The queries' rotation for attention over int4 pages (their keys are stored
// rotated): f32 rows equal ref::rotate_kv_row bit for bit; bf16/f16 rows are
// ref's f32 result rounded once.
TEST_CASE("rotate_kv_rows") {
  auto rng = rng_for("rotate_kv_rows");
  struct Shape {
    int tokens, heads, head_dim, padding;
  };
  const Shape shapes[] = {{1, 32, 128, 0}, {37, 4, 64, 64}, {5, 40, 128, 256}};
  for (const DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    for (const Shape& shape : shapes) {
      const std::size_t row = std::size_t(shape.heads) * shape.head_dim, stride = row + std::size_t(shape.padding);
      std::vector<float> x = rounded(random_floats(rng, std::size_t(shape.tokens) * stride, -4, 4), dtype);
      x[3] = 300.0f;  // a large channel
      std::vector<float> want(std::size_t(shape.tokens) * row);
      for (int t = 0; t < shape.tokens; ++t) {
        std::copy_n(x.begin() + long(std::size_t(t) * stride), row, want.begin() + long(std::size_t(t) * row));
        for (int h = 0; h < shape.heads; ++h)
          ref::rotate_kv_row(want.data() + std::size_t(t) * row + std::size_t(h) * shape.head_dim,
                             std::size_t(shape.head_dim));
      }
      DeviceBuffer<unsigned char> d_x, d_out(want.size() * ref::dtype_size(dtype));
      d_x.upload(to_bytes(x, dtype));
      d_out.poison();
      LAUNCH_OK(gpu::rotate_kv_rows(d_x.ptr, dtype, std::int64_t(stride), shape.tokens, shape.heads, shape.head_dim,
                                    d_out.ptr, nullptr));
      const std::vector<float> got = from_bytes(d_out.download(), dtype), expected = rounded(want, dtype);
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < got.size(); ++i) mismatches += got[i] != expected[i];
      report_bool("rotate_kv_rows",
                  fmt("%s tokens=%d heads=%d head_dim=%d stride=%zu", name_of(dtype), shape.tokens, shape.heads,
                      shape.head_dim, stride),
                  mismatches == 0, fmt("%zu of %zu values differ from ref", mismatches, got.size()));
    }
  }
}

// quantize_and_write_kv against ref::write_kv on the same values: the same
// bytes, untouched bytes included; dequantize_kv_slots against
// ref::load_kv_head: the same floats. Rows with NaN / +-inf, a constant row
// and a row with no finite value check the edge cases.
TEST_CASE("quantize_and_write_kv") {
  auto rng = rng_for("quantize_and_write_kv");
  struct Shape {
    int tokens, kv_heads, head_dim, block_tokens;
    bool padded_rows;  // row strides longer than kv_heads * head_dim
  };
  const Shape shapes[] = {{37, 8, 128, 16, false}, {5, 2, 64, 64, true}, {300, 1, 64, 32, false}, {64, 4, 128, 64, true}};
  for (const int bits : {8, 4})
    for (const DType dtype : all_dtypes)
      for (const Shape& shape : shapes) {
        const int hd = shape.head_dim, kv = shape.kv_heads;
        const int row = kv * hd, stride = row + (shape.padded_rows ? 3 * 8 : 0);
        const std::size_t tokens = std::size_t(shape.tokens);
        std::vector<float> k = rounded(random_floats(rng, tokens * stride, -4, 4), dtype);
        std::vector<float> v = rounded(random_floats(rng, tokens * stride, -1, 1), dtype);
        if (tokens > 3) {
          std::fill_n(k.begin() + stride, hd, 0.5f);  // token 1, head 0: constant
          k[2 * std::size_t(stride) + 1] = NAN;
          k[2 * std::size_t(stride) + 7] = INFINITY;
          k[2 * std::size_t(stride) + 9] = -INFINITY;
          std::fill_n(v.begin() + 3 * std::size_t(stride), hd, NAN);  // token 3, head 0: nothing finite
        }
        const int num_blocks = int((tokens + shape.block_tokens - 1) / shape.block_tokens) + 2;
        std::vector<std::int32_t> all_slots(std::size_t(num_blocks) * shape.block_tokens);
        std::iota(all_slots.begin(), all_slots.end(), 0);
        std::shuffle(all_slots.begin(), all_slots.end(), rng);
        std::vector<std::int32_t> slots(all_slots.begin(), all_slots.begin() + shape.tokens);
        if (tokens > 1) slots[tokens - 1] = -1;  // padding

        ref::KvCacheLayer layer{nullptr, nullptr, dtype, std::size_t(num_blocks), std::size_t(shape.block_tokens),
                                std::size_t(kv), std::size_t(hd)};
        layer.quant_bits = bits;
        std::vector<unsigned char> want_k(num_blocks * ref::kv_pool_block_bytes(layer), 0xA5), want_v = want_k;
        layer.k_pages = want_k.data();
        layer.v_pages = want_v.data();
        std::vector<std::int64_t> written;
        std::vector<float> packed_k, packed_v;
        for (std::size_t t = 0; t < tokens; ++t) {
          if (slots[t] < 0) continue;
          written.push_back(slots[t]);
          packed_k.insert(packed_k.end(), k.begin() + t * stride, k.begin() + t * stride + row);
          packed_v.insert(packed_v.end(), v.begin() + t * stride, v.begin() + t * stride + row);
        }
        const std::int32_t query_start[2] = {0, std::int32_t(written.size())};
        ref::PagedKvStep step;
        step.num_sequences = 1;
        step.query_start = query_start;
        step.block_tokens = std::size_t(shape.block_tokens);
        step.slot_mapping = written.data();
        REQUIRE(ref::write_kv(layer, step, packed_k.data(), packed_v.data()) == ref::Status::ok);

        DeviceBuffer<unsigned char> d_k, d_v, k_pages, v_pages;
        d_k.upload(to_bytes(k, dtype));
        d_v.upload(to_bytes(v, dtype));
        k_pages.upload(std::vector<unsigned char>(want_k.size(), 0xA5));
        v_pages.upload(std::vector<unsigned char>(want_v.size(), 0xA5));
        DeviceBuffer<std::int32_t> d_slots, flag(1);
        d_slots.upload(slots);
        CUDA_OK(cudaMemset(flag.ptr, 0, 4));
        gpu::KvQuantWriteArgs args;
        args.pages = {k_pages.ptr, v_pages.ptr, bits, shape.block_tokens, kv, hd,
                      std::int64_t(num_blocks) * shape.block_tokens};
        args.dtype = dtype;
        args.num_tokens = shape.tokens;
        args.keys = d_k.ptr;
        args.keys_row_stride = stride;
        args.values = d_v.ptr;
        args.values_row_stride = stride;
        args.slot_mapping = d_slots.ptr;
        args.error_flag = flag.ptr;
        LAUNCH_OK(gpu::quantize_and_write_kv(args, nullptr));
        const auto got_k = k_pages.download(), got_v = v_pages.download();
        long long differing = 0;
        for (std::size_t i = 0; i < got_k.size(); ++i) differing += (got_k[i] != want_k[i]) + (got_v[i] != want_v[i]);

        // Dequantized through the attention kernels' device function: ref's floats, bit for bit.
        std::vector<std::int32_t> read_slots(written.begin(), written.end());
        DeviceBuffer<std::int32_t> d_read;
        d_read.upload(read_slots);
        DeviceBuffer<float> d_out(read_slots.size() * row);
        d_out.poison();
        LAUNCH_OK(gpu::dequantize_kv_slots(args.pages, k_pages.ptr, d_read.ptr, int(read_slots.size()), d_out.ptr, nullptr));
        const auto got_floats = d_out.download();
        long long float_mismatches = 0, non_finite = 0;
        std::vector<float> want_head(hd);
        for (std::size_t i = 0; i < read_slots.size(); ++i)
          for (int g = 0; g < kv; ++g) {
            ref::load_kv_head(layer, want_k.data(), std::size_t(read_slots[i]), std::size_t(g), want_head.data());
            for (int d = 0; d < hd; ++d) {
              const float got = got_floats[(i * kv + g) * hd + d];
              non_finite += !std::isfinite(got);
              float_mismatches += std::memcmp(&got, &want_head[d], 4) != 0;
            }
          }
        const int flag_value = flag.download()[0];
        report_bool("kv_quant_write",
                    fmt("int%d %s tokens=%d kv_heads=%d hd=%d bt=%d%s", bits, name_of(dtype), shape.tokens, kv, hd,
                        shape.block_tokens, shape.padded_rows ? " padded rows" : ""),
                    differing == 0 && float_mismatches == 0 && non_finite == 0 && flag_value == 0,
                    fmt("%lld pool bytes differ from ref, %lld dequantized floats differ, %lld non-finite, flag %d",
                        differing, float_mismatches, non_finite, flag_value));
      }
  // Refused before launching: head_dim 96, a block of 3 x 1 rows (not 16-byte aligned).
  gpu::KvQuantWriteArgs bad;
  bad.pages = {reinterpret_cast<void*>(256), reinterpret_cast<void*>(512), 8, 16, 2, 96, 32};
  bad.num_tokens = 1;
  bad.keys = bad.values = reinterpret_cast<void*>(1024);
  bad.keys_row_stride = bad.values_row_stride = 192;
  bad.slot_mapping = reinterpret_cast<const std::int32_t*>(2048);
  CHECK(gpu::quantize_and_write_kv(bad, nullptr) == cudaErrorInvalidValue);
  bad.pages = {reinterpret_cast<void*>(256), reinterpret_cast<void*>(512), 8, 3, 1, 128, 3};
  bad.keys_row_stride = bad.values_row_stride = 128;
  CHECK(gpu::quantize_and_write_kv(bad, nullptr) == cudaErrorInvalidValue);
}

// ---- sampling ------------------------------------------------------------

TEST_CASE("sampling") {
  auto rng = rng_for("sampling");
  for (const int vocab : {32000, 128256}) {
    const int rows = 64;
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> logits(static_cast<std::size_t>(rows) * vocab);
    for (float& l : logits) l = normal(rng);
    std::vector<gpu::SamplingRow> params(rows);
    std::vector<std::int32_t> history;
    std::uniform_int_distribution<int> id_dist(0, vocab - 1);
    std::uniform_int_distribution<int> pick(0, 99);
    const int top_ks[] = {0, 0, 1, 20, 50, 1000};
    const float top_ps[] = {1.0f, 1.0f, 0.9f, 0.5f, 0.95f};
    for (int r = 0; r < rows; ++r) {
      auto& p = params[r];
      const int kind = r % 8;
      p.temperature = kind == 0 ? 0.0f : 0.5f + 0.1f * static_cast<float>(pick(rng) % 10);
      p.top_k = top_ks[pick(rng) % 6];
      p.top_p = top_ps[pick(rng) % 5];
      p.min_p = pick(rng) < 30 ? 0.05f : 0.0f;
      p.repetition_penalty = pick(rng) < 40 ? 1.3f : 1.0f;
      p.presence_penalty = pick(rng) < 30 ? 0.5f : 0.0f;
      p.frequency_penalty = pick(rng) < 30 ? 0.25f : 0.0f;
      p.seed = (static_cast<std::uint64_t>(rng()) << 1) ^ rng();
      p.step = static_cast<std::uint64_t>(pick(rng)) + (r % 5 == 0 ? (1ull << 33) : 0);
      // history with repeats: prompt then generated ids
      const int prompt = pick(rng) < 20 ? 0 : pick(rng) * 3;
      const int generated = pick(rng) * 2;
      p.prompt_offset = static_cast<std::int32_t>(history.size());
      p.num_prompt_ids = prompt;
      for (int i = 0; i < prompt; ++i) history.push_back(i > 0 && pick(rng) < 20 ? history.back() : id_dist(rng));
      p.generated_offset = static_cast<std::int32_t>(history.size());
      p.num_generated_ids = generated;
      for (int i = 0; i < generated; ++i) {
        history.push_back(i > 0 && pick(rng) < 30 ? history[history.size() - 1 - pick(rng) % i] : id_dist(rng));
      }
      if (kind == 1) {  // exact ties at the maximum: greedy and sampling must pick by id order
        p.temperature = r % 16 == 1 ? 0.0f : 1.0f;
        float* row = logits.data() + static_cast<std::size_t>(r) * vocab;
        for (int i = 0; i < 5; ++i) row[id_dist(rng)] = 20.0f;
        p.repetition_penalty = 1.0f;
        p.presence_penalty = p.frequency_penalty = 0.0f;
      }
    }
    std::vector<std::int32_t> want(rows);
    for (int r = 0; r < rows; ++r) {
      const auto& p = params[r];
      ref::SamplingParams rp;
      rp.temperature = p.temperature;
      rp.top_k = p.top_k;
      rp.top_p = p.top_p;
      rp.min_p = p.min_p;
      rp.repetition_penalty = p.repetition_penalty;
      rp.presence_penalty = p.presence_penalty;
      rp.frequency_penalty = p.frequency_penalty;
      rp.seed = p.seed;
      const ref::TokenHistory h{history.data() + p.prompt_offset, static_cast<std::size_t>(p.num_prompt_ids),
                                history.data() + p.generated_offset, static_cast<std::size_t>(p.num_generated_ids)};
      REQUIRE(ref::sample_token(logits.data() + static_cast<std::size_t>(r) * vocab, vocab, rp, h, p.step, &want[r]) ==
              ref::Status::ok);
    }
    DeviceBuffer<float> d_logits;
    d_logits.upload(logits);
    DeviceBuffer<gpu::SamplingRow> d_params;
    d_params.upload(params);
    DeviceBuffer<std::int32_t> d_history, d_tokens(rows), flag(1);
    d_history.upload(history);
    DeviceBuffer<unsigned char> workspace(gpu::sampling_workspace_bytes(rows, vocab));
    workspace.poison();
    CUDA_OK(cudaMemset(d_tokens.ptr, 0xFF, d_tokens.bytes()));
    CUDA_OK(cudaMemset(flag.ptr, 0, 4));
    gpu::SamplingBatch batch;
    batch.rows = rows;
    batch.vocab_size = vocab;
    batch.logits = d_logits.ptr;
    batch.logits_row_stride = vocab;
    batch.params = d_params.ptr;
    batch.history_ids = d_history.ptr;
    batch.tokens_out = d_tokens.ptr;
    batch.error_flag = flag.ptr;
    LAUNCH_OK(gpu::sample_tokens(batch, workspace.ptr, workspace.bytes(), nullptr));
    const auto got = d_tokens.download();
    int mismatches = 0;
    std::string detail;
    for (int r = 0; r < rows; ++r) {
      if (got[r] == want[r]) continue;
      if (++mismatches <= 4) {
        const auto& p = params[r];
        detail += fmt(" [row %d: gpu %d ref %d; T=%.2f k=%d p=%.2f minp=%.2f rep=%.2f pres=%.2f freq=%.2f]", r, got[r],
                      want[r], p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty, p.presence_penalty,
                      p.frequency_penalty);
      }
    }
    const bool logits_intact = d_logits.download() == logits;
    report_bool("sample_tokens",
                fmt("vocab=%d rows=%d greedy/top-k/top-p/min-p/penalties", vocab, rows),
                mismatches == 0 && logits_intact && flag.download()[0] == 0,
                fmt("%d/%d tokens match ref%s%s", rows - mismatches, rows, logits_intact ? "" : ", LOGITS MODIFIED",
                    detail.c_str()));
  }
}

// ---- bench ---------------------------------------------------------------

constexpr double hbm_peak_gbs = 3350.0;  // H100 SXM HBM3 datasheet

template <typename Launch>
float median_ms(Launch&& launch, int repeats = 50) {
  for (int i = 0; i < 5; ++i) launch();
  CUDA_OK(cudaDeviceSynchronize());
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < repeats; ++i) {
    CUDA_OK(cudaEventRecord(start));
    launch();
    CUDA_OK(cudaEventRecord(stop));
    CUDA_OK(cudaEventSynchronize(stop));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  CUDA_OK(cudaEventDestroy(start));
  CUDA_OK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void bench_rmsnorm() {
  std::printf("\n== add_rmsnorm bf16, hidden 4096 (bytes: x + residual read, residual + y written, + weight) ==\n");
  std::mt19937_64 rng(g_seed);
  const int hidden = 4096;
  for (const int rows : {1, 16, 256, 4096, 16384}) {
    const std::size_t n = static_cast<std::size_t>(rows) * hidden;
    DeviceBuffer<unsigned char> x, res, y, w;
    x.upload(to_bytes(random_floats(rng, n, -1, 1), DType::bf16));
    res.upload(to_bytes(random_floats(rng, n, -1, 1), DType::bf16));
    w.upload(to_bytes(random_floats(rng, hidden, 0.5, 1.5), DType::bf16));
    y.resize(n * 2);
    const float ms = median_ms([&] {
      CUDA_OK(gpu::add_rmsnorm(res.ptr, x.ptr, w.ptr, DType::bf16, rows, hidden, 1e-5f, y.ptr, nullptr));
    });
    const double bytes = 4.0 * n * 2 + hidden * 2;
    std::printf("rows=%6d  %9.2f us  %7.0f GB/s  (%4.1f%% of %.0f)\n", rows, ms * 1e3, bytes / (ms * 1e-3) / 1e9,
                100.0 * bytes / (ms * 1e-3) / 1e9 / hbm_peak_gbs, hbm_peak_gbs);
  }
}

void bench_small_gemm() {
  std::printf("\n== small_gemm bf16, Llama-3-8B matrices (bytes: the weight, read once) ==\n");
  std::mt19937_64 rng(g_seed);
  struct Shape {
    const char* name;
    int n, k;
  };
  for (const Shape shape : {Shape{"qkv", 6144, 4096}, Shape{"o_proj", 4096, 4096}, Shape{"gate_up", 28672, 4096} /* with silu_mul fused */,
                            Shape{"down", 4096, 14336}, Shape{"lm_head", 128256, 4096}}) {
    const std::size_t weights = std::size_t(shape.n) * shape.k;
    DeviceBuffer<unsigned char> w(weights * 2), x(8 * std::size_t(shape.k) * 2), y(8 * std::size_t(shape.n) * 4);
    CUDA_OK(cudaMemset(w.ptr, 0x3c, w.bytes()));  // small bf16 values; the speed does not depend on them
    x.upload(to_bytes(random_floats(rng, 8 * std::size_t(shape.k), -1, 1), DType::bf16));
    for (const int m : {1, 2, 4, 8}) {
      const bool gated = std::string(shape.name) == "gate_up";
      const float ms = median_ms([&] {
        if (gated) CUDA_OK(gpu::small_gemm_silu_mul(x.ptr, w.ptr, DType::bf16, m, shape.n / 2, shape.k, y.ptr, nullptr));
        else CUDA_OK(gpu::small_gemm(x.ptr, w.ptr, DType::bf16, m, shape.n, shape.k, y.ptr, false, nullptr));
      });
      const double bytes = double(weights) * 2;
      std::printf("%-8s m=%d n=%6d k=%5d %9.2f us  %7.0f GB/s  (%4.1f%% of %.0f)\n", shape.name, m, shape.n, shape.k,
                  ms * 1e3, bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / 1e9 / hbm_peak_gbs, hbm_peak_gbs);
    }
  }
}

// Launches `launch` `batch` times back to back per timing, so the host's
// launch overhead (two launches per split-k call) overlaps the GPU's work as
// it does inside a CUDA graph; the time of one.
template <typename Launch>
float median_ms_batched(Launch&& launch, int batch = 20) {
  return median_ms([&] {
           for (int i = 0; i < batch; ++i) launch();
         }) /
         float(batch);
}

void bench_awq_gemm() {
  std::printf("\n== awq_gemm bf16 g128, Llama-3-8B matrices (bytes: codes + zeros + scales, read once; "
              "TFLOP/s: 2 m n k; 20 launches a timing) ==\n");
  std::mt19937_64 rng(g_seed);
  struct Shape {
    const char* name;
    int n, k;
  };
  for (const Shape shape : {Shape{"qkv", 6144, 4096}, Shape{"o_proj", 4096, 4096}, Shape{"gate_up", 28672, 4096},
                            Shape{"down", 4096, 14336}}) {
    const AwqLayerData layer = make_awq_layer(rng, shape.n, shape.k, 128, AwqValues::random);
    AwqDeviceLayer device(layer.view(shape.n, shape.k, 128));
    const int max_m = 4096;
    DeviceBuffer<unsigned char> x(std::size_t(max_m) * shape.k * 2), y(std::size_t(max_m) * shape.n * 2);
    // (room for the sweep's up to 12 splits of 64 rows too)
    DeviceBuffer<unsigned char> ws(std::max<std::size_t>(gpu::awq_gemm_workspace_bytes(device.weights, max_m),
                                                         std::size_t(12) * 64 * shape.n * 4));
    x.upload(to_bytes(random_floats(rng, std::size_t(max_m) * shape.k, -1, 1), DType::bf16));
    const double bytes = double(device.codes.bytes() + device.zeros.bytes() + device.scales.bytes());
    const auto row = [&](const char* variant, int m, float ms) {
      std::printf("%-8s m=%4d n=%6d k=%5d %-14s %9.2f us  %7.0f GB/s  (%4.1f%% of %.0f)  %6.1f TFLOP/s\n", shape.name,
                  m, shape.n, shape.k, variant, ms * 1e3, bytes / (ms * 1e-3) / 1e9,
                  100.0 * bytes / (ms * 1e-3) / 1e9 / hbm_peak_gbs, hbm_peak_gbs,
                  2.0 * m * shape.n * shape.k / (ms * 1e-3) / 1e12);
    };
    for (const int m : {1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256, 1024, 4096}) {
      row("awq_gemm", m, median_ms_batched([&] {
            CUDA_OK(gpu::awq_gemm(device.weights, x.ptr, shape.k, DType::bf16, m, y.ptr, shape.n, ws.ptr, ws.bytes(),
                                  device.counters.ptr, device.counter_count(), nullptr));
          }));
    }
    {  // what the bf16 model does at these rows: cuBLAS over a 16-bit W (its bytes 3.5x the row's figure),
       // and the route above awq_gemm_direct_rows: W dequantized, then cuBLAS
      DeviceBuffer<unsigned char> dense(std::size_t(shape.n) * shape.k * 2);
      CUDA_OK(gpu::awq_dequantize(device.weights, DType::bf16, dense.ptr, nullptr));
      // (no doctest context here: a failed call reports and stops the bench)
      const auto cublas_ok = [](cublasStatus_t status, const char* what) {
        if (status == CUBLAS_STATUS_SUCCESS) return;
        std::printf("cuBLAS error %s in %s\n", cublasGetStatusString(status), what);
        std::exit(1);
      };
      cublasHandle_t handle = nullptr;
      cublas_ok(cublasCreate(&handle), "cublasCreate");
      const float one = 1.0f, zero = 0.0f;
      // y [m, n] = x [m, k] W[n, k]^T, column-major: y^T = W x^T
      const auto gemm = [&](int m) {
        cublas_ok(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, shape.n, m, shape.k, &one, dense.ptr, CUDA_R_16BF,
                               shape.k, x.ptr, CUDA_R_16BF, shape.k, &zero, y.ptr, CUDA_R_16BF, shape.n,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "cublasGemmEx");
      };
      for (const int m : {16, 32, 64, 96, 128, 192, 256, 870, 2048})
        row("cublas bf16 W", m, median_ms_batched([&] { gemm(m); }));
      for (const int m : {192, 256, 870, 2048})
        row("dequant+cublas", m, median_ms_batched([&] {
              CUDA_OK(gpu::awq_dequantize(device.weights, DType::bf16, dense.ptr, nullptr));
              gemm(m);
            }));
      cublasDestroy(handle);
    }
    {  // W dequantized to bf16 (above awq_gemm_direct_rows, before cuBLAS): codes read, 2 bytes a weight written
      DeviceBuffer<unsigned char> dense(std::size_t(shape.n) * shape.k * 2);
      const float ms = median_ms_batched([&] {
        CUDA_OK(gpu::awq_dequantize(device.weights, DType::bf16, dense.ptr, nullptr));
      });
      const double moved = bytes + double(dense.bytes());
      std::printf("%-8s dequantize to bf16 n=%6d k=%5d %9.2f us  %7.0f GB/s (codes read + weights written)\n",
                  shape.name, shape.n, shape.k, ms * 1e3, moved / (ms * 1e-3) / 1e9);
    }
    // The decode kernel with k cut into other numbers of splits, added by
    // the last CTA through global memory ("last") or in a cluster.
    for (const int m : {1, 8, 32, 64})
      for (const int splits : {1, 2, 3, 4, 5, 6, 8, 12})
        for (const bool cluster : {false, true}) {
          if (cluster && (splits == 1 || splits > 8)) continue;  // (a cluster holds at most 8)
          const std::string variant = fmt("splits %2d %s", splits, cluster ? "clus" : "last");
          row(variant.c_str(), m, median_ms_batched([&] {
                CUDA_OK(gpu::awq_gemm_sweep(device.weights, x.ptr, m, y.ptr, ws.ptr, ws.bytes(), device.counters.ptr,
                                            device.counter_count(), splits, cluster, nullptr));
              }));
        }
  }
}

void bench_fp8_small_gemm() {
  std::printf("\n== fp8_small_gemm e4m3, Llama-3-8B matrices (bytes: the weight codes, read once; quantize: "
              "quantize_rows_e4m3 of x before it; 20 launches a timing) ==\n");
  std::mt19937_64 rng(g_seed);
  struct Shape {
    const char* name;
    int n, k;
  };
  for (const Shape shape : {Shape{"qkv", 6144, 4096}, Shape{"o_proj", 4096, 4096}, Shape{"gate_up", 28672, 4096},
                            Shape{"down", 4096, 14336}}) {
    const std::size_t weights = std::size_t(shape.n) * shape.k;
    DeviceBuffer<unsigned char> w(weights), xb(16 * std::size_t(shape.k) * 2), xc(16 * std::size_t(shape.k)),
        y(16 * std::size_t(shape.n) * 2);
    DeviceBuffer<float> ws, xs(16);
    CUDA_OK(cudaMemset(w.ptr, 0x30, w.bytes()));  // small e4m3 values; the speed does not depend on them
    ws.upload(std::vector<float>(std::size_t(shape.n), 0.01f));
    xb.upload(to_bytes(random_floats(rng, 16 * std::size_t(shape.k), -1, 1), DType::bf16));
    for (const int m : {1, 2, 4, 8, 16}) {
      gpu::Fp8SmallGemm gemm;
      gemm.x_codes = xc.ptr;
      gemm.x_scales = xs.ptr;
      gemm.w_codes = w.ptr;
      gemm.w_scales = ws.ptr;
      gemm.m = m;
      gemm.n = shape.n;
      gemm.k = shape.k;
      gemm.y = y.ptr;
      gemm.y_stride = shape.n;
      gemm.y_dtype = DType::bf16;
      const float gemm_ms = median_ms_batched([&] { CUDA_OK(gpu::fp8_small_gemm(gemm, nullptr)); });
      const float both_ms = median_ms_batched([&] {
        CUDA_OK(gpu::quantize_rows_e4m3(xb.ptr, DType::bf16, shape.k, m, shape.k, xc.ptr, xs.ptr, 0.0f, nullptr));
        CUDA_OK(gpu::fp8_small_gemm(gemm, nullptr));
      });
      // x quantized inside the GEMM (gate_up: and SiLU-and-multiply), where it fits
      float fused_ms = 0.0f;
      if (gpu::fp8_small_gemm_quantizes(m, shape.k, xb.ptr, shape.k)) {
        gpu::Fp8SmallGemm fused = gemm;
        fused.x_codes = nullptr;
        fused.x_scales = nullptr;
        fused.x16 = xb.ptr;
        fused.x16_stride = shape.k;
        fused.silu_mul = std::string(shape.name) == "gate_up";
        fused_ms = median_ms_batched([&] { CUDA_OK(gpu::fp8_small_gemm(fused, nullptr)); });
      }
      const double bytes = double(weights);
      std::printf("%-8s m=%2d n=%6d k=%5d %9.2f us  %7.0f GB/s  (%4.1f%% of %.0f); with quantize %9.2f us %7.0f GB/s; "
                  "quantizing in the GEMM%s %s\n",
                  shape.name, m, shape.n, shape.k, gemm_ms * 1e3, bytes / (gemm_ms * 1e-3) / 1e9,
                  100.0 * bytes / (gemm_ms * 1e-3) / 1e9 / hbm_peak_gbs, hbm_peak_gbs, both_ms * 1e3,
                  bytes / (both_ms * 1e-3) / 1e9, std::string(shape.name) == "gate_up" ? " + SiLU" : "",
                  fused_ms > 0.0f ? fmt("%9.2f us", fused_ms * 1e3).c_str() : "(not taken)");
    }
  }
}

void bench_small_gemm_shapes() {
  std::printf("\n== small_gemm launch shapes, bf16 m=1 (unroll x warps/block; bytes: the weight) ==\n");
  std::mt19937_64 rng(g_seed);
  struct Shape {
    const char* name;
    int n, k;
    bool gated;
  };
  // Weights larger than L2 (50 MB) by rotating through 4 copies, as the model streams 32 layers.
  for (const Shape shape : {Shape{"qkv", 6144, 4096, false}, Shape{"o_proj", 4096, 4096, false},
                            Shape{"gate_up", 14336, 4096, true}, Shape{"down", 4096, 14336, false}}) {
    const std::size_t weights = std::size_t(shape.n) * shape.k * (shape.gated ? 2 : 1);
    constexpr int copies = 4;
    DeviceBuffer<unsigned char> w(weights * 2 * copies), x(std::size_t(shape.k) * 2), y(std::size_t(shape.n) * 4);
    CUDA_OK(cudaMemset(w.ptr, 0x3c, w.bytes()));
    x.upload(to_bytes(random_floats(rng, std::size_t(shape.k), -1, 1), DType::bf16));
    for (const auto& [unroll, warps] : {std::pair{2, 4}, std::pair{4, 4}, std::pair{8, 4}, std::pair{4, 8},
                                       std::pair{8, 8}, std::pair{8, 2}}) {
      int turn = 0;
      const float ms = median_ms([&] {
        const unsigned char* copy = w.ptr + (turn++ % copies) * weights * 2;
        CUDA_OK(gpu::small_gemm_sweep(unroll, warps, shape.gated, x.ptr, copy, shape.n, shape.k, y.ptr, nullptr));
      });
      const double bytes = double(weights) * 2;
      std::printf("%-8s unroll %d warps %d %9.2f us  %7.0f GB/s  (%4.1f%% of %.0f)\n", shape.name, unroll, warps,
                  ms * 1e3, bytes / (ms * 1e-3) / 1e9, 100.0 * bytes / (ms * 1e-3) / 1e9 / hbm_peak_gbs, hbm_peak_gbs);
    }
  }
}

struct DecodeShape {
  int batch, context;
};

// Device-to-device copy bandwidth (read + write bytes over time, 1 GiB
// buffers): the ceiling the decode figures are quoted against.
double measured_copy_gbs() {
  static double gbs = 0;
  if (gbs > 0) return gbs;
  const std::size_t bytes = std::size_t(1) << 30;
  DeviceBuffer<unsigned char> a(bytes), b(bytes);
  CUDA_OK(cudaMemset(a.ptr, 1, bytes));
  const float ms = median_ms([&] { CUDA_OK(cudaMemcpy(b.ptr, a.ptr, bytes, cudaMemcpyDeviceToDevice)); }, 20);
  gbs = 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
  return gbs;
}

// A benchmark's pool of `num_blocks` pages of layout's shape (for 16-bit
// pages, kv_bits 0, only its sizes count): random bf16 in [-1, 1),
// or random codes with a valid (scale, zero) per row, one (2 / (2^b - 1), -1)
// for all, so every dequantized value lies in [-1, 1] as well.
std::vector<unsigned char> random_bench_pages(std::mt19937_64& rng, int num_blocks,
                                              const ref::KvQuantBlockLayout& layout, int kv_bits) {
  const std::size_t values = layout.block_tokens * layout.kv_heads * layout.head_dim;
  if (kv_bits == 0) return to_bytes(random_floats(rng, std::size_t(num_blocks) * values, -1, 1), DType::bf16);
  const std::size_t block_bytes = layout.block_bytes();
  std::vector<unsigned char> host(std::size_t(num_blocks) * block_bytes);
  for (auto& byte : host) byte = static_cast<unsigned char>(rng());
  const ref::KvQuantParams params{ref::f32_to_f16(2.0f / ((1 << kv_bits) - 1)), ref::f32_to_f16(-1.0f)};
  for (int b = 0; b < num_blocks; ++b)
    for (std::size_t r = 0; r < layout.rows(); ++r)
      std::memcpy(&host[b * block_bytes + layout.params_at(r / layout.kv_heads, r % layout.kv_heads)], &params, 4);
  return host;
}

// The default list ends with the 10k ShareGPT-like run's own shape: ~256
// sequences of a few hundred positions. Each shape runs over bf16, int8 and
// int4 pages (same positions, same block tables); bytes are what the kernel
// reads of the cache: K and V codes plus the (scale, zero) words.
void bench_decode_attention(std::vector<DecodeShape> shapes = {{1, 1024}, {1, 8192}, {1, 32768}, {8, 4096},
                                                               {32, 2048}, {64, 4096}, {256, 1024}, {256, 256},
                                                               {256, 384}, {256, 512}}) {
  const double copy_gbs = measured_copy_gbs();
  std::printf("\n== decode attention, bf16 queries, Llama-3-8B layer (32 q heads, 8 kv heads, hd 128, 64-token pages); "
              "copy bandwidth measured %.0f GB/s ==\n", copy_gbs);
  std::mt19937_64 rng(g_seed);
  const int qh = 32, kv = 8, hd = 128, bt = 64;
  for (const DecodeShape shape : shapes) {
    const int blocks_per_seq = (shape.context + bt - 1) / bt;
    const int num_blocks = shape.batch * blocks_per_seq;
    std::vector<std::int32_t> qs(shape.batch + 1), ctx(shape.batch, shape.context), tables(num_blocks);
    if (g_decode_unequal) {  // the plan still sees max_context_len = C, as the engine's would
      std::uniform_int_distribution<int> length(std::min(64, shape.context), shape.context);
      for (int i = 1; i < shape.batch; ++i) ctx[i] = length(rng);
    }
    const double positions = std::accumulate(ctx.begin(), ctx.end(), 0.0);
    std::iota(qs.begin(), qs.end(), 0);
    std::iota(tables.begin(), tables.end(), 0);
    std::shuffle(tables.begin(), tables.end(), rng);
    DeviceBuffer<std::int32_t> d_qs, d_ctx, d_tables;
    d_qs.upload(qs);
    d_ctx.upload(ctx);
    d_tables.upload(tables);
    DeviceBuffer<unsigned char> q, out(static_cast<std::size_t>(shape.batch) * qh * hd * 2);
    q.upload(to_bytes(random_floats(rng, static_cast<std::size_t>(shape.batch) * qh * hd, -1, 1), DType::bf16));
    for (const int kv_bits : {0, 8, 4}) {
      const ref::KvQuantBlockLayout layout{std::size_t(bt), std::size_t(kv), std::size_t(hd), kv_bits == 0 ? 8 : kv_bits};
      const std::vector<unsigned char> host = random_bench_pages(rng, num_blocks, layout, kv_bits);
      DeviceBuffer<unsigned char> k, v;
      k.upload(host);
      v.upload(host);
      gpu::AttentionProblem problem;
      problem.dtype = DType::bf16;
      problem.head_dim = hd;
      problem.q_heads = qh;
      problem.kv_heads = kv;
      problem.num_sequences = shape.batch;
      problem.max_query_len = 1;
      problem.max_context_len = shape.context;
      problem.num_sms = g_num_sms;
      problem.kv_bits = kv_bits;
      for (const int splits : g_decode_splits) {
        problem.force_splits = splits;
        const auto plan = gpu::plan_paged_attention(problem);
        DeviceBuffer<unsigned char> workspace(std::max<std::size_t>(plan.workspace_bytes, 1));
        const gpu::PagedKvPools pools{k.ptr, v.ptr, DType::bf16, num_blocks, bt, kv, hd, kv_bits};
        const gpu::PagedAttentionBatch batch{shape.batch, d_qs.ptr, d_ctx.ptr, d_tables.ptr, blocks_per_seq};
        const float ms = median_ms([&] {
          CUDA_OK(gpu::paged_attention(plan, pools, batch, q.ptr, qh * hd, 0.088f, out.ptr, qh * hd, workspace.ptr,
                                       workspace.bytes(), nullptr));
        });
        const double row_bytes = kv_bits == 0 ? hd * 2.0 : double(layout.row_code_bytes()) + 4;
        const double bytes = 2.0 * positions * kv * row_bytes;
        const double gbs = bytes / (ms * 1e-3) / 1e9;
        std::printf("%-4s batch=%4d ctx=%6d  %9.2f us  %7.0f GB/s  (%5.1f%% of the copy)  splits=%d%s%s\n",
                    kv_bits == 8 ? "int8" : kv_bits == 4 ? "int4" : "bf16", shape.batch, shape.context, ms * 1e3, gbs,
                    100.0 * gbs / copy_gbs, plan.decode.splits, splits > 0 ? " (forced)" : "",
                    g_decode_unequal ? fmt(" (contexts 64..C, mean %.0f)", positions / shape.batch).c_str() : "");
      }
    }
  }
}

// Causal prefill of one sequence (`tokens` new tokens after `cached` ones)
// over bf16, int8 and int4 pages; FLOPs count the causal products only
// (4 * q_heads * head_dim per visible (query, key) pair). Each shape and
// format runs every form of the prefill kernel the device can run (wgmma
// with two warpgroups and the warp-specialized one on 9.0, mma.sync at 64
// and 128 rows); a star marks the plan's own pick.
void bench_prefill_attention() {
  std::printf("\n== prefill attention, bf16 queries, Llama-3-8B layer (32 q heads, 8 kv heads, hd 128, 64-token "
              "pages), one sequence, causal ==\n");
  std::mt19937_64 rng(g_seed);
  const int qh = 32, kv = 8, hd = 128, bt = 64;
  struct Shape {
    int cached, tokens;
  };
  for (const Shape shape : {Shape{0, 512}, Shape{0, 2048}, Shape{0, 8192}, Shape{6144, 2048}}) {
    const int context = shape.cached + shape.tokens;
    const int num_blocks = (context + bt - 1) / bt;
    std::vector<std::int32_t> tables(num_blocks);
    std::iota(tables.begin(), tables.end(), 0);
    DeviceBuffer<std::int32_t> d_qs, d_ctx, d_tables;
    d_qs.upload({0, shape.tokens});
    d_ctx.upload({context});
    d_tables.upload(tables);
    DeviceBuffer<unsigned char> q, out(static_cast<std::size_t>(shape.tokens) * qh * hd * 2);
    q.upload(to_bytes(random_floats(rng, static_cast<std::size_t>(shape.tokens) * qh * hd, -1, 1), DType::bf16));
    for (const int kv_bits : {0, 8, 4}) {
      const ref::KvQuantBlockLayout layout{std::size_t(bt), std::size_t(kv), std::size_t(hd), kv_bits == 0 ? 8 : kv_bits};
      const std::vector<unsigned char> host = random_bench_pages(rng, num_blocks, layout, kv_bits);
      DeviceBuffer<unsigned char> k, v;
      k.upload(host);
      v.upload(host);
      gpu::AttentionProblem problem;
      problem.dtype = DType::bf16;
      problem.head_dim = hd;
      problem.q_heads = qh;
      problem.kv_heads = kv;
      problem.num_sequences = 1;
      problem.max_query_len = shape.tokens;
      problem.max_context_len = context;
      problem.num_sms = g_num_sms;
      problem.kv_bits = kv_bits;
      const gpu::PagedKvPools pools{k.ptr, v.ptr, DType::bf16, num_blocks, bt, kv, hd, kv_bits};
      const gpu::PagedAttentionBatch batch{1, d_qs.ptr, d_ctx.ptr, d_tables.ptr, num_blocks};
      problem.compute_capability = g_compute_capability;
      // Each form of the prefill kernel where it can run; the one the plan
      // picks by itself is starred.
      problem.prefill_kernel = gpu::PrefillKernelChoice::automatic;
      const auto automatic = gpu::plan_paged_attention(problem).prefill;
      for (const auto choice : {gpu::PrefillKernelChoice::wgmma_128, gpu::PrefillKernelChoice::mma_sync_64,
                                gpu::PrefillKernelChoice::mma_sync_128, gpu::PrefillKernelChoice::wgmma_ws}) {
        problem.prefill_kernel = choice;
        const auto plan = gpu::plan_paged_attention(problem);
        if (!plan.valid) continue;
        DeviceBuffer<unsigned char> workspace(std::max<std::size_t>(plan.workspace_bytes, 1));
        const float ms = median_ms([&] {
          CUDA_OK(gpu::paged_attention(plan, pools, batch, q.ptr, qh * hd, 0.088f, out.ptr, qh * hd, workspace.ptr,
                                       workspace.bytes(), nullptr));
        }, 20);
        const double pairs = static_cast<double>(shape.tokens) * shape.cached +
                             static_cast<double>(shape.tokens) * (shape.tokens + 1) / 2;
        const bool picked = plan.prefill.wgmma == automatic.wgmma && plan.prefill.block_m == automatic.block_m &&
                            plan.prefill.warp_specialized == automatic.warp_specialized;
        std::printf("cached=%5d tokens=%5d %-4s %-8s rows=%3d %9.2f us  %6.1f TFLOP/s%s\n", shape.cached,
                    shape.tokens, kv_bits == 8 ? "int8" : kv_bits == 4 ? "int4" : "bf16",
                    plan.prefill.warp_specialized ? "wgmma-ws"
                    : plan.prefill.wgmma            ? "wgmma"
                                                    : "mma.sync",
                    plan.prefill.block_m, ms * 1e3,
                    4.0 * qh * hd * pairs / (ms * 1e-3) / 1e12, picked ? "  *" : "");
      }
    }
  }
}

// The vision encoders' attention at CLIP ViT-L/14-336's shape (16 heads of
// 64, 577 tokens, the [b, t, h, d] layout of a Linear's output): f32
// operands (gathered to bf16 first) and bf16 operands (read in place).
void bench_dense_attention() {
  std::printf("\n== dense attention, CLIP ViT-L/14-336 (16 heads x 64, 577 tokens), [b,t,h,d] operands ==\n");
  std::mt19937_64 rng(g_seed);
  const int heads = 16, hd = 64, tokens = 577;
  for (const int batch : {1, 8, 32}) {
    const std::size_t n = std::size_t(batch) * tokens * heads * hd;
    const ref::AttentionStrides strides{std::int64_t(tokens) * heads * hd, hd, std::int64_t(heads) * hd, 1};
    const ref::DenseAttentionShape shape{batch, heads, tokens, tokens, hd, 0.125f};
    const std::vector<float> values = random_floats(rng, n, -2, 2);
    std::vector<std::uint16_t> bits(n);
    for (std::size_t i = 0; i < n; ++i) bits[i] = ref::f32_to_bf16(values[i]);
    DeviceBuffer<float> f32_operand;
    DeviceBuffer<std::uint16_t> bf16_operand, out(n);
    f32_operand.upload(values);
    bf16_operand.upload(bits);
    DeviceBuffer<unsigned char> workspace(gpu::dense_attention_workspace_bytes(shape));
    for (const gpu::DenseAttentionKernel kernel :
         {gpu::DenseAttentionKernel::mma_sync, gpu::DenseAttentionKernel::wgmma}) {
      if (!gpu::dense_attention_kernel_available(kernel, hd)) continue;
      for (const DType dtype : {DType::f32, DType::bf16}) {
        const void* data = dtype == DType::f32 ? static_cast<const void*>(f32_operand.ptr) : bf16_operand.ptr;
        const gpu::DenseAttentionInput operand{data, dtype, strides};
        const float ms = median_ms([&] {
          CUDA_OK(gpu::dense_attention(shape, operand, operand, operand, out.ptr, DType::bf16, strides, workspace.ptr,
                                       nullptr, kernel));
        }, 20);
        const double flops = 4.0 * batch * heads * double(tokens) * tokens * hd;
        std::printf("batch=%2d %-8s %-4s operands%s %9.2f us  %6.1f TFLOP/s\n", batch,
                    kernel == gpu::DenseAttentionKernel::wgmma ? "wgmma" : "mma.sync", dtype == DType::f32 ? "f32" : "bf16",
                    gpu::dense_attention_reads_in_place(shape, operand) ? " (in place)" : " (gathered)", ms * 1e3,
                    flops / (ms * 1e-3) / 1e12);
      }
    }
  }
}

void bench_sampling() {
  std::printf("\n== sample_tokens, vocab 128256 ==\n");
  std::mt19937_64 rng(g_seed);
  const int vocab = 128256;
  for (const int rows : {1, 64, 256}) {
    for (const int mode : {0, 1, 2}) {
      DeviceBuffer<float> logits;
      logits.upload(random_floats(rng, static_cast<std::size_t>(rows) * vocab, -5, 5));
      std::vector<gpu::SamplingRow> params(rows);
      for (auto& p : params) {
        p.temperature = mode == 0 ? 0.0f : 0.8f;
        if (mode == 2) {
          p.top_k = 50;
          p.top_p = 0.9f;
        }
        p.seed = rng();
      }
      DeviceBuffer<gpu::SamplingRow> d_params;
      d_params.upload(params);
      DeviceBuffer<std::int32_t> tokens(rows);
      DeviceBuffer<unsigned char> workspace(gpu::sampling_workspace_bytes(rows, vocab));
      gpu::SamplingBatch batch;
      batch.rows = rows;
      batch.vocab_size = vocab;
      batch.logits = logits.ptr;
      batch.logits_row_stride = vocab;
      batch.params = d_params.ptr;
      batch.tokens_out = tokens.ptr;
      const float ms = median_ms([&] { CUDA_OK(gpu::sample_tokens(batch, workspace.ptr, workspace.bytes(), nullptr)); }, 20);
      std::printf("rows=%4d %-22s %9.2f us\n", rows,
                  mode == 0 ? "greedy" : (mode == 1 ? "temperature" : "top-k 50 + top-p 0.9"), ms * 1e3);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool bench = false;
  bool bench_gemm_only = false;  // --bench-gemm: the small_gemm timings alone
  bool bench_decode_only = false;  // --bench-decode [BxC]
  bool bench_prefill_only = false;  // --bench-prefill
  bool bench_fp8_only = false;     // --bench-fp8: small_gemm (bf16) and fp8_small_gemm alone
  bool bench_dense_only = false;   // --bench-dense: the vision encoders' attention alone
  std::vector<DecodeShape> decode_shapes;
  bool seed_given = false;
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--bench") {
      bench = true;
    } else if (arg == "--bench-gemm") {
      bench = true;
      bench_gemm_only = true;
    } else if (arg == "--bench-fp8") {
      bench = true;
      bench_fp8_only = true;
    } else if (arg == "--bench-prefill") {
      bench = true;
      bench_prefill_only = true;
    } else if (arg == "--bench-dense") {
      bench = true;
      bench_dense_only = true;
    } else if (arg == "--bench-decode") {
      bench = true;
      bench_decode_only = true;
      if (i + 1 < argc && argv[i + 1][0] != '-') {
        std::string list = argv[++i];
        for (std::size_t at = 0; at < list.size();) {
          const std::size_t end = std::min(list.find(',', at), list.size());
          int batch = 0, context = 0;
          if (std::sscanf(list.substr(at, end - at).c_str(), "%dx%d", &batch, &context) != 2 || batch <= 0 ||
              context <= 0) {
            std::fprintf(stderr, "--bench-decode: '%s' is not BxC[,BxC...]\n", list.c_str());
            return 2;
          }
          decode_shapes.push_back({batch, context});
          at = end + 1;
        }
      }
    } else if (arg == "--decode-unequal") {
      g_decode_unequal = true;
    } else if (arg == "--decode-splits" && i + 1 < argc) {
      g_decode_splits.clear();
      for (const char* at = argv[++i]; *at != '\0';) {
        char* end = nullptr;
        const long splits = std::strtol(at, &end, 10);
        if (end == at || splits < 0 || splits > 128 || (*end != ',' && *end != '\0')) {
          std::fprintf(stderr, "--decode-splits: '%s' is not N[,N...] with 0 <= N <= 128\n", argv[i]);
          return 2;
        }
        g_decode_splits.push_back(static_cast<int>(splits));
        at = *end == ',' ? end + 1 : end;
      }
    } else if (arg == "--seed" && i + 1 < argc) {
      g_seed = std::strtoull(argv[++i], nullptr, 0);
      seed_given = true;
    } else if (arg.rfind("--seed=", 0) == 0) {
      g_seed = std::strtoull(arg.c_str() + 7, nullptr, 0);
      seed_given = true;
    } else {
      rest.push_back(argv[i]);
    }
  }
  if (!seed_given) {
    if (const char* env = std::getenv("HOSTRUN_TEST_SEED"); env != nullptr) {
      g_seed = std::strtoull(env, nullptr, 0);
    } else {
      g_seed = std::random_device{}();
      g_seed = (g_seed << 32) ^ std::random_device{}();
    }
  }

  int devices = 0;
  const cudaError_t e = cudaGetDeviceCount(&devices);
  if (e != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "test_kernels_cuda: no CUDA device (%s). This driver needs an NVIDIA GPU; CI skips it "
                         "with ctest -LE gpu.\n",
                 e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    return 2;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 2;
  g_num_sms = prop.multiProcessorCount;
  g_compute_capability = prop.major * 10 + prop.minor;
  std::printf("test_kernels_cuda: %s (sm_%d%d, %d SMs, %.1f GiB), seed %llu (replay: --seed %llu)\n", prop.name,
              prop.major, prop.minor, prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0,
              static_cast<unsigned long long>(g_seed), static_cast<unsigned long long>(g_seed));

  if (bench) {
    g_bench = true;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // what a crash leaves behind is the last line printed
    if (bench_prefill_only) {
      bench_prefill_attention();
      return 0;
    }
    if (bench_dense_only) {
      bench_dense_attention();
      return 0;
    }
    if (bench_decode_only) {
      if (decode_shapes.empty())
        bench_decode_attention();
      else
        bench_decode_attention(decode_shapes);
      return 0;
    }
    bench_small_gemm();
    bench_fp8_small_gemm();
    if (bench_fp8_only) return 0;
    bench_awq_gemm();
    bench_small_gemm_shapes();
    if (bench_gemm_only) return 0;
    bench_rmsnorm();
    bench_decode_attention();
    bench_prefill_attention();
    bench_dense_attention();
    bench_sampling();
    return 0;
  }

  doctest::Context context;
  context.applyCommandLine(static_cast<int>(rest.size()), rest.data());
  const int rc = context.run();
  std::printf("\nkernels_cuda: %d passed, %d failed (seed %llu)\n", g_passed, g_failed,
              static_cast<unsigned long long>(g_seed));
  return rc != 0 || g_failed != 0 ? 1 : 0;
}
