#include "ref/dense_attention.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace hostrun::ref {

void dense_attention(const DenseAttentionShape& s, const float* q, const AttentionStrides& qs, const float* k,
                     const AttentionStrides& ks, const float* v, const AttentionStrides& vs, float* out,
                     const AttentionStrides& os) {
  std::vector<double> weights(static_cast<std::size_t>(s.kv_len));
  for (int b = 0; b < s.batch; ++b)
    for (int h = 0; h < s.heads; ++h)
      for (int i = 0; i < s.q_len; ++i) {
        double largest = -INFINITY;
        for (int j = 0; j < s.kv_len; ++j) {
          double dot = 0.0;
          for (int d = 0; d < s.head_dim; ++d) dot += double(q[qs.at(b, h, i, d)]) * double(k[ks.at(b, h, j, d)]);
          weights[std::size_t(j)] = double(s.scale) * dot;
          largest = std::max(largest, weights[std::size_t(j)]);
        }
        double total = 0.0;
        for (double& w : weights) total += (w = std::exp(w - largest));
        for (int d = 0; d < s.head_dim; ++d) {
          double sum = 0.0;
          for (int j = 0; j < s.kv_len; ++j) sum += weights[std::size_t(j)] * double(v[vs.at(b, h, j, d)]);
          out[os.at(b, h, i, d)] = float(sum / total);
        }
      }
}

}  // namespace hostrun::ref
