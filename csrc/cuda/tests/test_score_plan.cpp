// Host tests of the CUDA block_scores work split (score_plan.h): every tile of every band is owned by one
// CTA, the kept candidates never exceed k, and empty problems (no rows or columns of blocks, k = 0) make no
// CTA instead of dividing by zero.
#include <cstdio>

#include "../score_plan.h"
#include "expect.h"

using rigl_sparse::cuda::kMaxTilesPerCta;
using rigl_sparse::cuda::kScoreTile;
using rigl_sparse::cuda::ScoreSplit;
using rigl_sparse::cuda::split_score_work;

int main() {
  for (int64_t n : {0, 1, 100, 4096, 8192 + 16})
    for (int64_t kdim : {0, 1, 129, 4096, 8192 + 64})
      for (int64_t k : {0, 1, 64, 1 << 20})
        for (int sms : {0, 1, 132})
          for (int blocks_per_tile : {1, 4, 16}) {
            const ScoreSplit p = split_score_work(n, kdim, k, sms, blocks_per_tile);
            const int64_t tiles_k = (kdim + kScoreTile - 1) / kScoreTile;
            if (n == 0 || kdim == 0 || k == 0) {
              EXPECT(p.n_candidates == 0);
              continue;
            }
            EXPECT(p.bands == (n + kScoreTile - 1) / kScoreTile);
            EXPECT(p.tiles_per_cta >= 1 && p.tiles_per_cta <= kMaxTilesPerCta);
            EXPECT(static_cast<int64_t>(p.ctas_per_band) * p.tiles_per_cta >= tiles_k);
            EXPECT(static_cast<int64_t>(p.ctas_per_band - 1) * p.tiles_per_cta < tiles_k);
            EXPECT(p.keep >= 1 && p.keep <= k && p.keep <= p.tiles_per_cta * blocks_per_tile);
            EXPECT(p.n_candidates == static_cast<int64_t>(p.bands) * p.ctas_per_band * p.keep);
          }
  if (failures) std::printf("%d failures\n", failures);
  return failures ? 1 : 0;
}
