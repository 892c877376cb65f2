#include "kv_write.hpp"

namespace hostrun::kv_cuda {

namespace {

// One block per token; 16-byte copies when every row start is 16-byte
// aligned (always for head_dim 64/128 bf16 in a fused QKV row), else 2-byte
// words (any even element size).
template <typename Word>
__global__ void write_kv_kernel(KvWriteArgs args) {
  const int t = blockIdx.x;
  const std::int32_t slot = args.slot_mapping[t];
  if (slot < 0 || slot >= args.num_slots) return;
  const int words = args.row_elements * args.element_bytes / int(sizeof(Word));
  const auto* k_src = reinterpret_cast<const Word*>(static_cast<const char*>(args.keys) +
                                                     std::int64_t(t) * args.keys_row_stride * args.element_bytes);
  const auto* v_src = reinterpret_cast<const Word*>(static_cast<const char*>(args.values) +
                                                     std::int64_t(t) * args.values_row_stride * args.element_bytes);
  const std::int64_t offset = std::int64_t(slot) * args.row_elements * args.element_bytes;
  auto* k_dst = reinterpret_cast<Word*>(static_cast<char*>(args.k_pages) + offset);
  auto* v_dst = reinterpret_cast<Word*>(static_cast<char*>(args.v_pages) + offset);
  for (int i = threadIdx.x; i < words; i += blockDim.x) {
    k_dst[i] = k_src[i];
    v_dst[i] = v_src[i];
  }
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t write_kv(const KvWriteArgs& args, cudaStream_t stream) {
  if (args.num_tokens <= 0) return cudaSuccess;
  if (args.element_bytes <= 0 || args.element_bytes % 2 != 0) return cudaErrorInvalidValue;
  const std::int64_t row_bytes = std::int64_t(args.row_elements) * args.element_bytes;
  const bool wide = row_bytes % 16 == 0 && aligned16(args.keys) && aligned16(args.values) &&
                    aligned16(args.k_pages) && aligned16(args.v_pages) &&
                    (args.keys_row_stride * args.element_bytes) % 16 == 0 &&
                    (args.values_row_stride * args.element_bytes) % 16 == 0;
  if (wide)
    write_kv_kernel<uint4><<<args.num_tokens, 128, 0, stream>>>(args);
  else
    write_kv_kernel<unsigned short><<<args.num_tokens, 128, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace hostrun::kv_cuda
