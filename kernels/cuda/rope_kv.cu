#include "cuda/common.cuh"
#include "cuda/rope_kv.hpp"

namespace hostrun::cuda {

namespace {

constexpr int rope_threads = 128;
constexpr int max_half_dim = 256;  // head_dim up to 512

// Work items of one token, each one 16-byte vector of V elements:
//   [0, q_items)            rotate V pairs (i, i + d/2) of a q head
//   [q_items, +k_items)     rotate V pairs of a k head, store into the K pool
//   [.., +v_items)          copy V elements of a v head into the V pool
template <typename T>
__global__ void __launch_bounds__(rope_threads) rope_kv_kernel(RopeKvArgs args) {
  constexpr int V = detail::vec_width<T>;
  __shared__ float cos_table[max_half_dim];
  __shared__ float sin_table[max_half_dim];
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

  const int pair_vectors = half_dim / V;  // vectors per half head
  const int q_items = args.q_heads * pair_vectors;
  const int k_items = args.kv_heads * pair_vectors;
  const int v_items = args.kv_heads * (head_dim / V);
  const T* row = static_cast<const T*>(args.qkv) + static_cast<std::int64_t>(t) * args.qkv_row_stride;
  T* q_row = static_cast<T*>(args.q_out) + static_cast<std::int64_t>(t) * args.q_out_row_stride;
  const std::int64_t slot_offset = static_cast<std::int64_t>(write_kv ? slot : 0) * args.kv_heads * head_dim;
  T* k_slot = static_cast<T*>(args.k_pages) + slot_offset;
  T* v_slot = static_cast<T*>(args.v_pages) + slot_offset;
  const T* k_src = row + static_cast<std::int64_t>(args.q_heads) * head_dim;
  const T* v_src = k_src + static_cast<std::int64_t>(args.kv_heads) * head_dim;

  for (int item = threadIdx.x; item < q_items + k_items + v_items; item += blockDim.x) {
    if (item < q_items + k_items) {
      const bool is_q = item < q_items;
      const int local = is_q ? item : item - q_items;
      if (!is_q && !write_kv) continue;
      const int head = local / pair_vectors;
      const int i0 = (local % pair_vectors) * V;
      const T* src = (is_q ? row : k_src) + head * head_dim;
      T* dst = is_q ? q_row + head * head_dim : k_slot + head * head_dim;
      float first[V], second[V], out_first[V], out_second[V];
      detail::load_vec(src + i0, first);
      detail::load_vec(src + i0 + half_dim, second);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float c = cos_table[i0 + e];
        const float s = sin_table[i0 + e];
        // Unfused like ref's expression, so the f32 variant agrees to rounding.
        out_first[e] = __fsub_rn(__fmul_rn(first[e], c), __fmul_rn(second[e], s));
        out_second[e] = __fadd_rn(__fmul_rn(second[e], c), __fmul_rn(first[e], s));
      }
      detail::store_vec(dst + i0, out_first);
      detail::store_vec(dst + i0 + half_dim, out_second);
    } else if (write_kv) {
      const int local = item - q_items - k_items;
      *reinterpret_cast<uint4*>(v_slot + local * V) = *reinterpret_cast<const uint4*>(v_src + local * V);
    }
  }
}

template <typename T>
cudaError_t launch(const RopeKvArgs& args, cudaStream_t stream) {
  constexpr int V = detail::vec_width<T>;
  const auto misaligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 != 0; };
  if ((args.head_dim / 2) % V != 0 || args.qkv_row_stride % V != 0 || args.q_out_row_stride % V != 0 ||
      misaligned(args.qkv) || misaligned(args.q_out) || misaligned(args.k_pages) || misaligned(args.v_pages)) {
    return cudaErrorInvalidValue;
  }
  rope_kv_kernel<T><<<args.num_tokens, rope_threads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

cudaError_t rope_and_write_kv(const RopeKvArgs& args, cudaStream_t stream) {
  if (args.num_tokens == 0) return cudaSuccess;
  if (args.num_tokens < 0 || args.head_dim <= 0 || args.head_dim % 16 != 0 || args.head_dim / 2 > max_half_dim ||
      args.q_heads < 0 || args.kv_heads <= 0) {
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
