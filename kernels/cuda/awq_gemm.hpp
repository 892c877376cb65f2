// W4A16 linear layers on AutoAWQ weights (twin of ref::awq_gemm):
//
//   y[m, n] = sum_k x[m, k] * W[n, k],   W[n, k] = (q[k, n] - z[k / group, n]) * s[k / group, n]
//
//   x  [m, k] bf16 / f16 rows (16-byte aligned, row stride a multiple of 8)
//   y  [m, n] the same dtype (4-byte aligned, even row stride)
//
// The checkpoint's tensors are repacked once at load (awq_repack, host code)
// into the order the kernels consume them, so every weight load is a 16-byte
// stream and every code lands in the register of the mma fragment that uses
// it:
//
//   codes  u32 [n / 32][k_padded / 128][4 tiles][32 lanes][4 words] (n / 8
//          tiles rounded up to groups of four; padding tiles hold code 0):
//          the four column tiles a decode warp streams sit side by side in
//          each k-block, so every tile and block is a constant offset from
//          one address. Lane l of tile (nt, kb) serves column nt*8 + l/4
//          and, with t = l % 4, the input
//          channels k = kb*128 + 16s + 4t + 2j + e of the eight m16n8k16 steps
//          s = 0..7 (j: the fragment register, e: its half). Word s/2 holds
//          step s's four codes in nibbles 2(s%2) + j + 4e. One shift and one
//          AND-OR turn a (j) pair into two 16-bit numbers 128 + q (bf16) or
//          1024 + q (f16) in the halves of a register, as an mma fragment
//          wants them (B in the tile kernel, A in the decode kernel).
//   zeros  u32 [k_padded / group][n / 8], nibble j = column 8c + j (plain order).
//   scales f16 [k_padded / group][n].
//
// The k order inside a step is permuted (mma sums over its 16 k in any
// order, as long as x uses the same one): a lane's x operand for step s is
// then the four consecutive values x[16s + 4t .. +3], one 8-byte load,
// instead of a gather. Every step stays inside one 16-wide slice of k, so
// the groups (32, 64, 128) stay whole.
//
// k_padded rounds in_features up to 128; the padding holds code 0 with zero
// scale, and x is read as 0 there, so it adds nothing.
//
// Why exact: the tile kernel subtracts (128 + z) from (128 + q) in 16 bits
// (exact: small integers), multiplies by x on the tensor cores with f32
// accumulation (exact products), and applies each group's f16 scale to the
// group's f32 partial sums. So the only difference from ref::awq_gemm on the
// same x is the order of f32 additions; the result is rounded to dtype once.
// The decode kernel in bf16 at up to 16 rows instead multiplies 128 + q
// and subtracts (128 + z) times the group's sum of x (awq_gemm.cu says
// why): the same exact products, ~7 bits of the f32 sums lost to the
// cancellation, still far below the bf16 rounding of the result.
//
// Two kernels read the layout:
//  - decode rows (m <= 192 at group 128, <= 16 at 64): the weights are the
//    mma's A operand and x^T its B operand, 8 rows of x a product; each
//    warp streams the codes of four column tiles straight from memory into
//    registers, two k-blocks ahead, and multiplies each A fragment it
//    dequantizes with every 8-row group of x (1, 2, 4 or 8; above 64 rows
//    the grid has a row block a 64 rows). One or two groups read x a block
//    ahead into registers (L1 hits); four or eight stage each block of x once
//    a CTA in shared memory (cp.async, double-buffered) and subtract the zero
//    point per code. The weight-streaming kernel: bound by instructions a
//    byte (NOTES.md).
//  - more rows (and group 32): a CTA of 4 warps computes 64 columns x up to
//    64 rows over a range of k; x tiles, codes and group parameters flow
//    through shared memory in a cp.async pipeline.
// For few CTAs k is split across them, the f32 partial sums meeting in
// `workspace`; the last CTA of a tile to finish adds them in split order
// (counted in `counters`), so no second kernel runs and the result does not
// depend on which CTA finishes last. Both are programmatic dependents of
// the kernel before them (sm_90): they start loading weights before x is
// ready (common.cuh), so the weights must not be written by earlier work in
// the stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/dtype.hpp"
#include "ref/awq.hpp"

namespace hostrun::cuda {

inline constexpr int awq_k_block = 128;  // k per codes tile; in_features is padded to it
inline constexpr int awq_tile_group = 4;  // column tiles side by side in each k-block of codes

// Tiles of codes a layer of n_tiles column tiles stores (whole groups).
constexpr int awq_padded_tiles(int n_tiles) { return (n_tiles + awq_tile_group - 1) / awq_tile_group * awq_tile_group; }
// Index of the 32-lane unit of tile nt, block kb in codes (times 32 lanes x 4 words = its first word).
constexpr std::size_t awq_tile_index(int nt, int kb, int k_blocks) {
  return (std::size_t(nt / awq_tile_group) * k_blocks + kb) * awq_tile_group + nt % awq_tile_group;
}

// The kernel's layout in host memory, made from a checkpoint's tensors.
struct AwqRepacked {
  std::vector<std::uint32_t> codes;
  std::vector<std::uint32_t> zeros;
  std::vector<std::uint16_t> scales;
  int in_features = 0, out_features = 0, group_size = 0;
  int padded_in = 0;  // in_features rounded up to awq_k_block
};

// Repacks one layer (out_features a multiple of 8, group_size 32/64/128
// dividing in_features, in_features a multiple of 8). Host code.
AwqRepacked awq_repack(const ref::AwqWeights& layer);

// The code of W[n, k] as awq_repack placed it (tests read the layout back).
std::uint32_t awq_repacked_code(const AwqRepacked& repacked, int k, int n);

// The same arrays in device memory (the caller owns them).
struct AwqDeviceWeights {
  const std::uint32_t* codes = nullptr;
  const std::uint32_t* zeros = nullptr;
  const std::uint16_t* scales = nullptr;
  int in_features = 0, out_features = 0, group_size = 0, padded_in = 0;
};

// The most rows awq_gemm multiplies faster than dequantizing W once
// (awq_dequantize) and running a 16-bit GEMM over it: where the decode kernel
// takes the rows (192 at group 128), 64 otherwise (the tile kernel; H100
// figures in kernels/cuda/NOTES.md). Callers with more rows take the dense
// route.
int awq_gemm_direct_rows(const AwqDeviceWeights& weights);

// Device workspace awq_gemm and awq_gemm_silu_mul need for calls of up to
// `max_rows` rows on the current device (split-k partial sums; 0 when no
// call splits or fuses).
std::size_t awq_gemm_workspace_bytes(const AwqDeviceWeights& weights, int max_rows);

// Split counters the calls need: a u32 array the caller owns, zeroed once
// (cudaMemset), that every call leaves zero again. One array per layer, not
// shared by calls that may run at the same time.
int awq_gemm_counters(const AwqDeviceWeights& weights, int max_rows);

// y = x W^T as above. cudaErrorInvalidValue for a dtype other than bf16/f16,
// misaligned x / y, a group size other than 32/64/128, or a workspace or
// counter array smaller than the call needs (awq_gemm_workspace_bytes,
// awq_gemm_counters for m rows).
cudaError_t awq_gemm(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype, int m,
                     void* y, std::int64_t y_stride, void* workspace, std::size_t workspace_bytes,
                     std::uint32_t* counters, int counter_count, cudaStream_t stream);

// The MLP's first half on a [gate | up] layer (n = 2 intermediate) for a few
// rows: out[r, j] = silu(gate_j) * up_j, [m, n / 2] in dtype, each product
// rounded to dtype first (twin of ref::awq_gemm, rounding, then
// ref::silu_and_mul), so no [m, n] product is written or launched for.
// Taken by the decode kernel only: awq_gemm_fuses_silu_mul says when (its
// rows, n a multiple of 128); cudaErrorInvalidValue
// otherwise, and for what awq_gemm refuses. The sums always pass through the
// workspace (awq_gemm_workspace_bytes covers it).
bool awq_gemm_fuses_silu_mul(const AwqDeviceWeights& weights, int m);
cudaError_t awq_gemm_silu_mul(const AwqDeviceWeights& weights, const void* x, std::int64_t x_stride, DType dtype,
                              int m, void* out, std::int64_t out_stride, void* workspace, std::size_t workspace_bytes,
                              std::uint32_t* counters, int counter_count, cudaStream_t stream);

// W [n, k] in dtype from the repacked layer (twin of ref::awq_dequantize,
// rounded once to dtype): (q - z) * s in f32. For products of many rows a
// 16-bit tensor-core GEMM (cuBLAS) on W outruns awq_gemm's tile kernel by
// more than the dequantization costs (docs/benchmarks.md, W4A16 rows), so a
// layer may dequantize into scratch and multiply there. `weight` holds
// n * k elements, 8-byte aligned; in_features a multiple of 4.
cudaError_t awq_dequantize(const AwqDeviceWeights& weights, DType dtype, void* weight, cudaStream_t stream);

// For test_kernels_cuda only: the decode-row kernel (bf16, group 128, its
// rows, x and y contiguous) with k cut into `splits` (0: awq_gemm's choice)
// and the splits reduced in a cluster where the GPU allows it or by the last
// CTA through `workspace`, to measure and check the choices awq_gemm makes.
cudaError_t awq_gemm_sweep(const AwqDeviceWeights& weights, const void* x, int m, void* y, void* workspace,
                           std::size_t workspace_bytes, std::uint32_t* counters, int counter_count, int splits,
                           bool cluster_reduce, cudaStream_t stream);

}  // namespace hostrun::cuda
