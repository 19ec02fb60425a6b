// The top-k selection of block_scores (portable code: it runs once per layer and update).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace rigl_sparse {
namespace cpu {

// The k best of scores[0, n): descending, NaN first, ties to the lower index; -1 / -inf past the candidates.
inline void top_k(const float* scores, int64_t n, int64_t k, float* out_scores, int64_t* out_index) {
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  auto better = [scores](int64_t a, int64_t b) {
    const float sa = scores[a], sb = scores[b];
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return na;
    if (!na && sa != sb) return sa > sb;
    return a < b;
  };
  const int64_t kk = std::min(k, n);
  std::partial_sort(order.begin(), order.begin() + kk, order.end(), better);
  for (int64_t i = 0; i < k; ++i) {
    const bool found = i < kk && scores[order[i]] != -INFINITY;
    out_scores[i] = found ? scores[order[i]] : -INFINITY;
    out_index[i] = found ? order[i] : -1;
  }
}

}  // namespace cpu
}  // namespace rigl_sparse
