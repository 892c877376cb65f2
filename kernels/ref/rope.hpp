// Rotary position embedding, HF Llama convention (rotate_half, NOT interleaved):
//
//   inv_freq[i] = 1 / theta^(2i / head_dim)                 i = 0 .. head_dim/2 - 1
//   angle       = position * inv_freq[i]
//   out[i]            = x[i] * cos(angle) - x[i + head_dim/2] * sin(angle)
//   out[i + head_dim/2] = x[i + head_dim/2] * cos(angle) + x[i] * sin(angle)
//
// i.e. x * cos(emb) + rotate_half(x) * sin(emb) with emb = cat(freqs, freqs)
// and rotate_half(x) = cat(-x2, x1): dimension i pairs with i + head_dim/2.
//
// rope_scaling type "llama3" (Llama 3.1+), as transformers'
// _compute_llama3_parameters:
//
//   low_freq_wavelen  = original_max_position_embeddings / low_freq_factor
//   high_freq_wavelen = original_max_position_embeddings / high_freq_factor
//   wavelen = 2*pi / inv_freq
//   wavelen <  high_freq_wavelen: inv_freq                       (high frequencies kept)
//   wavelen >  low_freq_wavelen:  inv_freq / factor              (low frequencies stretched)
//   otherwise (medium band):      smooth = (orig / wavelen - low_freq_factor)
//                                          / (high_freq_factor - low_freq_factor)
//                                 (1 - smooth) * inv_freq / factor + smooth * inv_freq
// The llama3 type leaves the attention scaling at 1.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hostrun::ref {

enum class RopeScalingType : std::uint8_t { none, llama3 };

struct RopeParams {
  std::size_t head_dim = 128;  // even
  double theta = 10000.0;      // config.json rope_theta
  RopeScalingType scaling_type = RopeScalingType::none;
  // rope_scaling fields, used when scaling_type == llama3.
  double factor = 8.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192.0;
};

// The per-dimension frequencies, computed once per model.
struct RopeTable {
  std::size_t head_dim = 0;
  std::vector<float> inv_freq;  // [head_dim / 2]
};

// Computed in double and rounded once to f32 (HF computes in f32; the two
// agree to about an ulp of inv_freq).
RopeTable make_rope_table(const RopeParams& params);

// Rotates q [num_tokens, q_heads, head_dim] and k [num_tokens, kv_heads,
// head_dim] in place; token t is at positions[t]. Either q or k may be null
// (with 0 heads) to rotate only the other.
//
// The angle is the f32 product float(position) * inv_freq[i], as HF's f32
// matmul forms it: at large positions the rounding of that product moves the
// angle by far more than a cos/sin ulp, so matching it matters more than
// computing it more precisely. cos/sin of that f32 angle are then evaluated
// in double and rounded.
void apply_rope(const RopeTable& table, const std::int32_t* positions, std::size_t num_tokens, float* q,
                std::size_t q_heads, float* k, std::size_t kv_heads);

}  // namespace hostrun::ref
