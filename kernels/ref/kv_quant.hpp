// Online KV-cache quantization, the format of LMDeploy's TurboMind
// (--quant-policy 8 and 4), so that results compare with it:
//
//   one row = one token's keys (or values) of one KV head, head_dim values;
//   asymmetric, statistics over the row:
//     scale = (max - min) / (2^bits - 1)        zero = min
//     q     = round_half_even((x - zero) / scale), saturated to [0, 2^bits - 1]
//     x'    = q * scale + zero                   (one fused multiply-add)
//
// Keys are quantized after RoPE (the model hands the rotated keys to write).
// The (scale, zero) pair is kept as two IEEE f16 (2 + 2 bytes a row), and
// the codes are computed with the f16-rounded pair, so x' is exactly what
// the stored bytes say. Every kernel that quantizes computes the same f32
// operations in the same order — max and min over the finite values, one
// subtraction and one IEEE division per value, round half to even — so a GPU
// kernel and this one produce the same bytes, and dequantize to the same
// floats (fmaf(q, scale, zero)).
//
// Inputs that are not finite never make a NaN: the statistics skip them, a
// NaN stores code 0 (x' = min), +inf the top code, -inf code 0. A row whose
// finite values are all equal (max == min) has scale 0 and dequantizes to
// that value exactly; one with no finite value to 0. Statistics beyond the
// f16 range are saturated to +-65504.
//
// int4 packs two codes a byte: element 2i in the low nibble, 2i+1 in the high.
//
// int4 keys are rotated before they are quantized (kv_keys_rotated): each key
// row (after RoPE) is multiplied by the normalized Walsh-Hadamard matrix H
// (rotate_kv_row; write_kv and the CUDA stores do it), and the KV policy
// multiplies each query by the same H before attending over such pages
// (paged_attention takes the queries as given), so q . k is unchanged (H is
// orthogonal and symmetric). A few large channels in a RoPE'd key row
// stretch its range over 15 steps; H spreads them over the row, and on the
// small trained model int4's perplexity cost falls from +4.9% to +2.8%
// (docs/benchmarks.md). The bytes
// and their layout stay TurboMind's; int8 keys and all values are stored as
// they are (rotation buys them nothing measurable). Because H mixes the row,
// a key row holding NaN or inf becomes a row without finite values, which
// dequantizes to zeros.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hostrun::ref {

// One row's (scale, zero), as stored: IEEE f16 bits.
struct KvQuantParams {
  std::uint16_t scale = 0;
  std::uint16_t zero = 0;
};

// Bits a code takes: 8 or 4.
constexpr bool valid_kv_bits(int bits) { return bits == 8 || bits == 4; }
// Bytes `n` codes take.
constexpr std::size_t kv_code_bytes(std::size_t n, int bits) { return bits == 8 ? n : (n + 1) / 2; }

// Where one token's one KV head lives inside a quantized block of a pool
// (paged_kv.hpp), in bytes from the block's start: the codes of every
// (offset, head) row first, then their parameters, so a block is one opaque
// span. Both go head-major: one head's consecutive tokens are contiguous, so
// an attention CTA (one KV head, 64 positions a tile) reads one run of codes
// (4 KB of int4 at head_dim 128) and one of 256 parameter bytes, where
// token-major rows would give it 64 pieces of 64 bytes 512 apart and 64
// words 32 apart. One definition for ref and kernels/cuda (constexpr, usable
// on the device).
struct KvQuantBlockLayout {
  std::size_t block_tokens = 0;
  std::size_t kv_heads = 0;
  std::size_t head_dim = 0;
  int bits = 8;

  constexpr std::size_t row_code_bytes() const { return kv_code_bytes(head_dim, bits); }
  constexpr std::size_t rows() const { return block_tokens * kv_heads; }
  constexpr std::size_t params_start() const { return rows() * row_code_bytes(); }
  constexpr std::size_t block_bytes() const { return rows() * (row_code_bytes() + sizeof(KvQuantParams)); }
  constexpr std::size_t codes_at(std::size_t offset, std::size_t head) const {
    return (head * block_tokens + offset) * row_code_bytes();
  }
  constexpr std::size_t params_at(std::size_t offset, std::size_t head) const {
    return params_start() + (head * block_tokens + offset) * sizeof(KvQuantParams);
  }
};

// Quantizes x[0, n) into `codes` (kv_code_bytes(n, bits) bytes) and returns
// the row's parameters. `bits` must be 8 or 4.
KvQuantParams quantize_kv_row(const float* x, std::size_t n, int bits, std::uint8_t* codes);

// x'[0, n) from the codes and parameters quantize_kv_row made.
void dequantize_kv_row(const std::uint8_t* codes, std::size_t n, int bits, KvQuantParams params, float* out);

// Whether key rows of `bits`-bit pages are stored rotated (above).
constexpr bool kv_keys_rotated(int bits) { return bits == 4; }

// row[0, n) times H, in place: the normalized Walsh-Hadamard transform over
// each block of b values, b the largest power of two dividing n (the whole
// row for head_dim 64 or 128). Butterflies stride 1, 2, 4, ... (a + b, a - b
// in f32), then each value times the f32 nearest 1/sqrt(b); kernels/cuda
// computes the same operations in the same order, so the results are equal.
// Its own inverse up to rounding.
void rotate_kv_row(float* row, std::size_t n);

}  // namespace hostrun::ref
