#include "ref/rope.hpp"

#include <cmath>
#include <numbers>

namespace hostrun::ref {

RopeTable make_rope_table(const RopeParams& params) {
  RopeTable table;
  table.head_dim = params.head_dim;
  const std::size_t half_dim = params.head_dim / 2;
  table.inv_freq.resize(half_dim);
  for (std::size_t i = 0; i < half_dim; ++i) {
    double inv_freq = 1.0 / std::pow(params.theta, static_cast<double>(2 * i) / static_cast<double>(params.head_dim));
    if (params.scaling_type == RopeScalingType::llama3) {
      const double original_context = params.original_max_position_embeddings;
      const double low_freq_wavelen = original_context / params.low_freq_factor;
      const double high_freq_wavelen = original_context / params.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / inv_freq;
      if (wavelen > low_freq_wavelen) {
        inv_freq /= params.factor;
      } else if (!(wavelen < high_freq_wavelen)) {
        const double smooth = (original_context / wavelen - params.low_freq_factor) /
                              (params.high_freq_factor - params.low_freq_factor);
        inv_freq = (1.0 - smooth) * inv_freq / params.factor + smooth * inv_freq;
      }
    }
    table.inv_freq[i] = static_cast<float>(inv_freq);
  }
  return table;
}

namespace {

void rotate_heads(float* heads, std::size_t num_heads, std::size_t head_dim, const float* cos_angle,
                  const float* sin_angle) {
  const std::size_t half_dim = head_dim / 2;
  for (std::size_t h = 0; h < num_heads; ++h) {
    float* head = heads + h * head_dim;
    for (std::size_t i = 0; i < half_dim; ++i) {
      const float first = head[i];
      const float second = head[i + half_dim];
      head[i] = first * cos_angle[i] - second * sin_angle[i];
      head[i + half_dim] = second * cos_angle[i] + first * sin_angle[i];
    }
  }
}

}  // namespace

void apply_rope(const RopeTable& table, const std::int32_t* positions, std::size_t num_tokens, float* q,
                std::size_t q_heads, float* k, std::size_t kv_heads) {
  const std::size_t head_dim = table.head_dim;
  const std::size_t half_dim = head_dim / 2;
  // cos/sin depend only on (position, i): computed once per token and shared
  // by all q and k heads.
  std::vector<float> cos_angle(half_dim);
  std::vector<float> sin_angle(half_dim);
  for (std::size_t t = 0; t < num_tokens; ++t) {
    const float position = static_cast<float>(positions[t]);
    for (std::size_t i = 0; i < half_dim; ++i) {
      const float angle = position * table.inv_freq[i];
      cos_angle[i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_angle[i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
    if (q != nullptr) rotate_heads(q + t * q_heads * head_dim, q_heads, head_dim, cos_angle.data(), sin_angle.data());
    if (k != nullptr) rotate_heads(k + t * kv_heads * head_dim, kv_heads, head_dim, cos_angle.data(), sin_angle.data());
  }
}

}  // namespace hostrun::ref
