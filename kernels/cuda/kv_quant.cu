#include "cuda/kv_quant.cuh"
#include "cuda/kv_quant.hpp"

namespace hostrun::cuda {

namespace {

constexpr int store_threads = 128;  // 4 warps, one (token, head, K or V) row each at a time

ref::KvQuantBlockLayout layout_of(const QuantizedKvPages& pages) {
  return {static_cast<std::size_t>(pages.block_tokens), static_cast<std::size_t>(pages.kv_heads),
          static_cast<std::size_t>(pages.head_dim), pages.bits};
}

// One block per token; warp w quantizes rows w, w + 4, ... of the token's
// 2 * kv_heads rows (keys first, then values).
template <typename T, int kBits, int kPerLane>
__global__ void __launch_bounds__(store_threads)
    quantize_write_kernel(KvQuantWriteArgs args, detail::QuantizedPool k_pool, detail::QuantizedPool v_pool) {
  detail::wait_for_previous_grid();  // a programmatic dependent: k and v come from the QKV product
  detail::allow_next_grid_to_launch();  // attention may be scheduled (it waits for these pages)
  const int t = blockIdx.x;
  const std::int32_t slot = args.slot_mapping[t];
  if (slot < 0) return;
  if (slot >= args.pages.num_slots) {
    if (threadIdx.x == 0) detail::raise_error(args.error_flag, Status::slot_out_of_range);
    return;
  }
  const int kv_heads = args.pages.kv_heads;
  const int lane = threadIdx.x & 31;
  for (int row = threadIdx.x >> 5; row < 2 * kv_heads; row += store_threads / 32) {
    const bool is_key = row < kv_heads;
    const int head = is_key ? row : row - kv_heads;
    const T* src = static_cast<const T*>(is_key ? args.keys : args.values) +
                   static_cast<std::int64_t>(t) * (is_key ? args.keys_row_stride : args.values_row_stride) +
                   head * (32 * kPerLane) + lane * kPerLane;
    float x[kPerLane];
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) x[e] = detail::to_f32(src[e]);
    if (is_key && ref::kv_keys_rotated(kBits)) detail::rotate_row_warp<kPerLane>(x);  // int4 keys: H k
    const detail::QuantizedPool& pool = is_key ? k_pool : v_pool;
    detail::quantize_row_warp<kBits, kPerLane>(x, pool.codes(slot, head), pool.params(slot, head));
  }
}

// ref::rotate_kv_row of each (token, head) row, one warp a row: read in T,
// rotated in f32, written in T.
template <typename T, int kPerLane>
__global__ void rotate_rows_kernel(const T* __restrict__ x, std::int64_t x_row_stride, int tokens, int heads,
                                   T* __restrict__ out) {
  constexpr int head_dim = 32 * kPerLane;
  const int row = blockIdx.x * (blockDim.x / 32) + (threadIdx.x >> 5);
  if (row >= tokens * heads) return;  // whole warps: rotate_row_warp needs all 32 lanes
  const int token = row / heads, head = row % heads, lane = threadIdx.x & 31;
  const T* src = x + static_cast<std::int64_t>(token) * x_row_stride + head * head_dim + lane * kPerLane;
  float v[kPerLane];
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) v[e] = detail::to_f32(src[e]);
  detail::rotate_row_warp<kPerLane>(v);
  T* dst = out + static_cast<std::int64_t>(row) * head_dim + lane * kPerLane;
#pragma unroll
  for (int e = 0; e < kPerLane; ++e) dst[e] = detail::from_f32<T>(v[e]);
}

template <typename T>
cudaError_t launch_rotate(const void* x, std::int64_t x_row_stride, int tokens, int heads, int head_dim, void* out,
                          cudaStream_t stream) {
  constexpr int warps = 4;
  const int blocks = static_cast<int>((static_cast<std::int64_t>(tokens) * heads + warps - 1) / warps);
  if (head_dim == 64)
    rotate_rows_kernel<T, 2><<<blocks, 32 * warps, 0, stream>>>(static_cast<const T*>(x), x_row_stride, tokens, heads,
                                                               static_cast<T*>(out));
  else
    rotate_rows_kernel<T, 4><<<blocks, 32 * warps, 0, stream>>>(static_cast<const T*>(x), x_row_stride, tokens, heads,
                                                               static_cast<T*>(out));
  return cudaGetLastError();
}

template <int kBits, int kPerLane>
__global__ void dequantize_kernel(detail::QuantizedPool pool, const std::int32_t* slots, float* out) {
  const int i = blockIdx.x;
  const std::int32_t slot = slots[i];
  constexpr int head_dim = 32 * kPerLane;
  for (int e = threadIdx.x; e < pool.kv_heads * head_dim; e += blockDim.x) {
    const int head = e / head_dim, d = e % head_dim;
    const unsigned char* codes = pool.codes(slot, head);
    const std::uint32_t q = kBits == 8 ? codes[d] : (codes[d / 2] >> (4 * (d % 2))) & 0xfu;
    out[static_cast<std::int64_t>(i) * pool.kv_heads * head_dim + e] =
        detail::dequantize_kv(q, detail::unpack_kv_params(*pool.params(slot, head)));
  }
}

template <typename T, int kBits>
cudaError_t launch_write(const KvQuantWriteArgs& args, cudaStream_t stream) {
  const ref::KvQuantBlockLayout layout = layout_of(args.pages);
  const auto k_pool = detail::QuantizedPool::of(args.pages.k_pages, layout);
  const auto v_pool = detail::QuantizedPool::of(args.pages.v_pages, layout);
  const auto kernel =
      args.pages.head_dim == 64 ? quantize_write_kernel<T, kBits, 2> : quantize_write_kernel<T, kBits, 4>;
  return detail::launch_dependent(kernel, dim3(args.num_tokens), dim3(store_threads), 0, stream, args, k_pool, v_pool);
}

template <typename T>
cudaError_t launch_write(const KvQuantWriteArgs& args, cudaStream_t stream) {
  return args.pages.bits == 8 ? launch_write<T, 8>(args, stream) : launch_write<T, 4>(args, stream);
}

}  // namespace

bool quantized_kv_supported(int bits, int head_dim, int block_tokens, int kv_heads) {
  // Rows of 16-byte multiples and blocks of 16-byte multiples: the attention
  // kernels copy codes in 16-byte pieces and every block start stays aligned.
  return (bits == 8 || bits == 4) && (head_dim == 64 || head_dim == 128) && block_tokens > 0 && kv_heads > 0 &&
         (static_cast<long long>(block_tokens) * kv_heads) % 4 == 0;
}

cudaError_t quantize_and_write_kv(const KvQuantWriteArgs& args, cudaStream_t stream) {
  if (args.num_tokens == 0) return cudaSuccess;
  const QuantizedKvPages& pages = args.pages;
  const std::int64_t row = static_cast<std::int64_t>(pages.kv_heads) * pages.head_dim;
  if (args.num_tokens < 0 || !quantized_kv_supported(pages.bits, pages.head_dim, pages.block_tokens, pages.kv_heads) ||
      args.keys == nullptr || args.values == nullptr || args.slot_mapping == nullptr || pages.k_pages == nullptr ||
      pages.v_pages == nullptr || args.keys_row_stride < row || args.values_row_stride < row)
    return cudaErrorInvalidValue;
  switch (args.dtype) {
    case DType::f32: return launch_write<float>(args, stream);
    case DType::bf16: return launch_write<__nv_bfloat16>(args, stream);
    case DType::f16: return launch_write<__half>(args, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t dequantize_kv_slots(const QuantizedKvPages& pages, const void* pool, const std::int32_t* slots,
                                int num_slots_to_read, float* out, cudaStream_t stream) {
  if (num_slots_to_read == 0) return cudaSuccess;
  if (num_slots_to_read < 0 || !quantized_kv_supported(pages.bits, pages.head_dim, pages.block_tokens, pages.kv_heads) ||
      pool == nullptr || slots == nullptr || out == nullptr)
    return cudaErrorInvalidValue;
  const auto view = detail::QuantizedPool::of(const_cast<void*>(pool), layout_of(pages));
  if (pages.bits == 8) {
    if (pages.head_dim == 64) dequantize_kernel<8, 2><<<num_slots_to_read, 128, 0, stream>>>(view, slots, out);
    else dequantize_kernel<8, 4><<<num_slots_to_read, 128, 0, stream>>>(view, slots, out);
  } else {
    if (pages.head_dim == 64) dequantize_kernel<4, 2><<<num_slots_to_read, 128, 0, stream>>>(view, slots, out);
    else dequantize_kernel<4, 4><<<num_slots_to_read, 128, 0, stream>>>(view, slots, out);
  }
  return cudaGetLastError();
}

cudaError_t rotate_kv_rows(const void* x, DType dtype, std::int64_t x_row_stride, int tokens, int heads, int head_dim,
                           void* out, cudaStream_t stream) {
  if (tokens < 0 || heads <= 0 || (head_dim != 64 && head_dim != 128) ||
      x_row_stride < static_cast<std::int64_t>(heads) * head_dim || x == nullptr || out == nullptr ||
      static_cast<std::int64_t>(tokens) * heads > (std::int64_t(1) << 31) - 1)
    return cudaErrorInvalidValue;
  if (tokens == 0) return cudaSuccess;
  switch (dtype) {
    case DType::f32: return launch_rotate<float>(x, x_row_stride, tokens, heads, head_dim, out, stream);
    case DType::bf16: return launch_rotate<__nv_bfloat16>(x, x_row_stride, tokens, heads, head_dim, out, stream);
    case DType::f16: return launch_rotate<__half>(x, x_row_stride, tokens, heads, head_dim, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
