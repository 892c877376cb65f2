#include "cuda/common.cuh"
#include "cuda/embedding.hpp"

namespace hostrun::cuda {

namespace {

// A row copy needs no conversion: 16-byte words straight through when the
// row is a whole number of them and aligned, else element by element.
template <typename T>
__global__ void embedding_kernel(const std::int32_t* __restrict__ token_ids, const T* __restrict__ table,
                                 std::int64_t vocab_size, int hidden_size, T* __restrict__ out,
                                 std::int32_t* error_flag, bool vectorized) {
  const int t = blockIdx.x;
  const std::int32_t id = token_ids[t];
  T* out_row = out + static_cast<std::int64_t>(t) * hidden_size;
  const bool valid = id >= 0 && id < vocab_size;
  if (!valid && threadIdx.x == 0) detail::raise_error(error_flag, Status::token_id_out_of_range);
  const T* row = table + static_cast<std::int64_t>(valid ? id : 0) * hidden_size;
  if (vectorized) {
    const int words = hidden_size / detail::vec_width<T>;
    const uint4* src = reinterpret_cast<const uint4*>(row);
    uint4* dst = reinterpret_cast<uint4*>(out_row);
    for (int i = threadIdx.x; i < words; i += blockDim.x) dst[i] = valid ? src[i] : make_uint4(0, 0, 0, 0);
  } else {
    for (int i = threadIdx.x; i < hidden_size; i += blockDim.x) out_row[i] = valid ? row[i] : T{};
  }
}

template <typename T>
cudaError_t launch(const std::int32_t* token_ids, int num_tokens, const void* table, std::int64_t vocab_size,
                   int hidden_size, void* out, std::int32_t* error_flag, cudaStream_t stream) {
  const bool aligned = (reinterpret_cast<std::uintptr_t>(table) % 16 == 0) &&
                       (reinterpret_cast<std::uintptr_t>(out) % 16 == 0);
  const bool vectorized = aligned && hidden_size % detail::vec_width<T> == 0;
  embedding_kernel<T><<<num_tokens, 128, 0, stream>>>(token_ids, static_cast<const T*>(table), vocab_size,
                                                       hidden_size, static_cast<T*>(out), error_flag, vectorized);
  return cudaGetLastError();
}

}  // namespace

cudaError_t embedding_lookup(const std::int32_t* token_ids, int num_tokens, const void* table, DType dtype,
                             std::int64_t vocab_size, int hidden_size, void* out, std::int32_t* error_flag,
                             cudaStream_t stream) {
  if (num_tokens == 0 || hidden_size == 0) return cudaSuccess;
  if (num_tokens < 0 || hidden_size < 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::f32: return launch<float>(token_ids, num_tokens, table, vocab_size, hidden_size, out, error_flag, stream);
    case DType::bf16:
      return launch<__nv_bfloat16>(token_ids, num_tokens, table, vocab_size, hidden_size, out, error_flag, stream);
    case DType::f16: return launch<__half>(token_ids, num_tokens, table, vocab_size, hidden_size, out, error_flag, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace hostrun::cuda
