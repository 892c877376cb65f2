#include "cuda/common.cuh"
#include "cuda/kv_quant.cuh"
#include "cuda/kv_quant.hpp"
#include "cuda/rope_kv.hpp"

namespace hostrun::cuda {

namespace {

constexpr int rope_threads = 128;
constexpr int max_half_dim = 256;  // head_dim up to 512

// Elements [0, V) at p: one 16-byte access when V fills one, else V scalar ones.
template <typename T, int V>
__device__ __forceinline__ void load_elements(const T* p, float (&out)[V]) {
  if constexpr (V == detail::vec_width<T>) {
    detail::load_vec(p, out);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = detail::to_f32(p[e]);
  }
}
template <typename T, int V>
__device__ __forceinline__ void store_elements(T* p, const float (&in)[V]) {
  if constexpr (V == detail::vec_width<T>) {
    detail::store_vec(p, in);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) p[e] = detail::from_f32<T>(in[e]);
  }
}
template <typename T, int V>
__device__ __forceinline__ void copy_elements(T* dst, const T* src) {
  if constexpr (V == detail::vec_width<T>) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) dst[e] = src[e];
  }
}

// Work items of one token, each V consecutive elements (V = one 16-byte
// vector, or 1 for views that are not aligned to 16 bytes):
//   [0, q_items)            rotate V pairs (i, i + d/2) of a q head in place
//   [q_items, +k_items)     rotate V pairs of a k head, store into the K pool
//   [.., +v_items)          copy V elements of a v head into the V pool
// Quantized pools (kBits 8 or 4) take only the q items there; warp w then
// rotates and quantizes rows w, w + 4, ... of the token's keys and values
// (kv_quant.cuh's quantize_row_warp), lane l holding elements [kPerLane l,
// + kPerLane).
template <typename T, int V, int kBits = 0, int kPerLane = 1>
__global__ void __launch_bounds__(rope_threads)
    rope_kv_kernel(RopeKvArgs args, detail::QuantizedPool k_pool = {}, detail::QuantizedPool v_pool = {}) {
  __shared__ float cos_table[max_half_dim];
  __shared__ float sin_table[max_half_dim];
  detail::wait_for_previous_grid();  // a programmatic dependent: q, k and v come from the QKV product
  detail::allow_next_grid_to_launch();  // attention may be scheduled (it waits for these pages)
  const int t = blockIdx.x;
  const int head_dim = args.head_dim;
  const int half_dim = head_dim / 2;

  // cos/sin depend on (position, i) only: computed once per token, shared by
  // all heads. Double sincos of the f32 angle matches ref to the last bit in
  // almost every case; it is 64 calls per token, negligible next to the copy.
  const float position = static_cast<float>(args.positions[t]);
  for (int i = threadIdx.x; i < half_dim; i += blockDim.x) {
    const float angle = __fmul_rn(position, args.inv_freq[i]);
    double s, c;
    sincos(static_cast<double>(angle), &s, &c);
    cos_table[i] = static_cast<float>(c);
    sin_table[i] = static_cast<float>(s);
  }
  __syncthreads();

  const std::int32_t slot = args.slot_mapping[t];
  const bool write_kv = slot >= 0 && slot < args.num_slots;
  if (slot >= args.num_slots && threadIdx.x == 0) detail::raise_error(args.error_flag, Status::slot_out_of_range);

  const int pair_vectors = half_dim / V;  // work items per half head
  const int q_items = args.q_heads * pair_vectors;
  const int k_items = kBits == 0 ? args.kv_heads * pair_vectors : 0;
  const int v_items = kBits == 0 ? args.kv_heads * (head_dim / V) : 0;
  T* q_row = static_cast<T*>(args.q) + static_cast<std::int64_t>(t) * args.q_row_stride;
  const T* k_row = static_cast<const T*>(args.k) + static_cast<std::int64_t>(t) * args.k_row_stride;
  const T* v_row = static_cast<const T*>(args.v) + static_cast<std::int64_t>(t) * args.v_row_stride;
  const std::int64_t slot_offset = static_cast<std::int64_t>(write_kv ? slot : 0) * args.kv_heads * head_dim;
  T* k_slot = static_cast<T*>(args.k_pages) + slot_offset;
  T* v_slot = static_cast<T*>(args.v_pages) + slot_offset;

  for (int item = threadIdx.x; item < q_items + k_items + v_items; item += blockDim.x) {
    if (item < q_items + k_items) {
      const bool is_q = item < q_items;
      const int local = is_q ? item : item - q_items;
      if (!is_q && !write_kv) continue;
      const int head = local / pair_vectors;
      const int i0 = (local % pair_vectors) * V;
      const T* src = is_q ? q_row + head * head_dim : k_row + head * head_dim;
      T* dst = is_q ? q_row + head * head_dim : k_slot + head * head_dim;
      float first[V], second[V], out_first[V], out_second[V];
      load_elements<T, V>(src + i0, first);
      load_elements<T, V>(src + i0 + half_dim, second);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float c = cos_table[i0 + e];
        const float s = sin_table[i0 + e];
        // Unfused like ref's expression, so the f32 variant agrees to rounding.
        out_first[e] = __fsub_rn(__fmul_rn(first[e], c), __fmul_rn(second[e], s));
        out_second[e] = __fadd_rn(__fmul_rn(second[e], c), __fmul_rn(first[e], s));
      }
      store_elements<T, V>(dst + i0, out_first);
      store_elements<T, V>(dst + i0 + half_dim, out_second);
    } else if (write_kv) {
      const int local = item - q_items - k_items;
      copy_elements<T, V>(v_slot + local * V, v_row + local * V);
    }
  }
  if constexpr (kBits != 0) {
    if (!write_kv) return;
    // Lane l's partner in the rotation, element i +- head_dim / 2, is lane l ^ 16.
    const int lane = threadIdx.x & 31;
    const int first = lane * kPerLane;
    const bool first_half = first < half_dim;
    for (int row = threadIdx.x >> 5; row < 2 * args.kv_heads; row += rope_threads / 32) {
      const bool is_key = row < args.kv_heads;
      const int head = is_key ? row : row - args.kv_heads;
      const T* src = (is_key ? k_row : v_row) + head * head_dim + first;
      float x[kPerLane];
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) x[e] = detail::to_f32(src[e]);
      if (is_key) {
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) {
          const float partner = __shfl_xor_sync(0xffffffffu, x[e], 16);
          const int i = (first + e) % half_dim;
          const float c = cos_table[i], s = sin_table[i];
          // The same unfused expressions as the 16-bit path above.
          x[e] = first_half ? __fsub_rn(__fmul_rn(x[e], c), __fmul_rn(partner, s))
                            : __fadd_rn(__fmul_rn(x[e], c), __fmul_rn(partner, s));
        }
      }
      if (is_key && ref::kv_keys_rotated(kBits)) detail::rotate_row_warp<kPerLane>(x);  // int4 keys: H k, after RoPE
      const detail::QuantizedPool& pool = is_key ? k_pool : v_pool;
      detail::quantize_row_warp<kBits, kPerLane>(x, pool.codes(slot, head), pool.params(slot, head));
    }
  }
}

template <typename T, int kBits>
cudaError_t launch_quantized(const RopeKvArgs& args, cudaStream_t stream) {
  constexpr int V = detail::vec_width<T>;
  const ref::KvQuantBlockLayout layout{static_cast<std::size_t>(args.block_tokens),
                                       static_cast<std::size_t>(args.kv_heads),
                                       static_cast<std::size_t>(args.head_dim), kBits};
  const auto k_pool = detail::QuantizedPool::of(args.k_pages, layout);
  const auto v_pool = detail::QuantizedPool::of(args.v_pages, layout);
  const auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool vectors = (args.head_dim / 2) % V == 0 && args.q_row_stride % V == 0 && aligned(args.q);
  const auto kernel = args.head_dim == 64
                          ? (vectors ? rope_kv_kernel<T, V, kBits, 2> : rope_kv_kernel<T, 1, kBits, 2>)
                          : (vectors ? rope_kv_kernel<T, V, kBits, 4> : rope_kv_kernel<T, 1, kBits, 4>);
  return detail::launch_dependent(kernel, dim3(args.num_tokens), dim3(rope_threads), 0, stream, args, k_pool, v_pool);
}

template <typename T>
cudaError_t launch(const RopeKvArgs& args, cudaStream_t stream) {
  if (args.kv_bits == 8) return launch_quantized<T, 8>(args, stream);
  if (args.kv_bits == 4) return launch_quantized<T, 4>(args, stream);
  constexpr int V = detail::vec_width<T>;
  const auto aligned = [](const void* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  const bool vectors = (args.head_dim / 2) % V == 0 && args.q_row_stride % V == 0 && args.k_row_stride % V == 0 &&
                       args.v_row_stride % V == 0 && aligned(args.q) && aligned(args.k) && aligned(args.v) &&
                       aligned(args.k_pages) && aligned(args.v_pages);
  const detail::QuantizedPool none{};  // 16-bit pages
  return detail::launch_dependent(vectors ? rope_kv_kernel<T, V> : rope_kv_kernel<T, 1>, dim3(args.num_tokens),
                                  dim3(rope_threads), 0, stream, args, none, none);
}

}  // namespace

cudaError_t rope_and_write_kv(const RopeKvArgs& args, cudaStream_t stream) {
  if (args.num_tokens == 0) return cudaSuccess;
  const std::int64_t kv_row = std::int64_t(args.kv_heads) * args.head_dim;
  if (args.num_tokens < 0 || args.head_dim <= 0 || args.head_dim % 2 != 0 || args.head_dim / 2 > max_half_dim ||
      args.q_heads < 0 || args.kv_heads <= 0 || (args.q_heads > 0 && args.q == nullptr) || args.k == nullptr ||
      args.v == nullptr || args.q_row_stride < std::int64_t(args.q_heads) * args.head_dim ||
      args.k_row_stride < kv_row || args.v_row_stride < kv_row ||
      (args.kv_bits != 0 && !quantized_kv_supported(args.kv_bits, args.head_dim, args.block_tokens, args.kv_heads))) {
    return cudaErrorInvalidValue;
  }
  switch (args.dtype) {
    case DType::f32: return launch<float>(args, stream);
    case DType::bf16: return launch<__nv_bfloat16>(args, stream);
    case DType::f16: return launch<__half>(args, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
