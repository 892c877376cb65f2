// Attention without a mask or a cache, as vision encoders (ViT, CLIP) use it:
// every query sees every key of its (batch, head).
//
//   out[b, h, i, :] = sum_j softmax_j(scale * q[b, h, i, :] . k[b, h, j, :]) v[b, h, j, :]
//
// q, k, v and out are read and written through strides (elements) over the
// axes (batch, head, token, dim), so a head-split transpose before the
// product or a head-merge after it costs nothing: the ONNX vision executor
// reads the tensors the Transpose nodes would have permuted.
#pragma once

#include <cstdint>

namespace hostrun::ref {

struct DenseAttentionShape {
  int batch = 1, heads = 1, q_len = 0, kv_len = 0, head_dim = 0;
  float scale = 1.0f;  // applied to q . k before the softmax
};

// Strides of (batch, head, token, dim), in elements.
struct AttentionStrides {
  std::int64_t batch = 0, head = 0, token = 0, dim = 1;
  std::int64_t at(int b, int h, int t, int d) const { return b * batch + h * head + t * token + d * dim; }
};

// f32 throughout (double accumulation); out must not alias the inputs.
void dense_attention(const DenseAttentionShape& shape, const float* q, const AttentionStrides& q_strides,
                     const float* k, const AttentionStrides& k_strides, const float* v,
                     const AttentionStrides& v_strides, float* out, const AttentionStrides& out_strides);

}  // namespace hostrun::ref
