// How the CUDA block_scores splits its work over CTAs, shared by the kernel's launcher and its host-side
// tests.  Plain C++: nothing here needs CUDA or torch.
#pragma once

#include <algorithm>
#include <cstdint>

namespace rigl_sparse {
namespace cuda {

constexpr int kScoreTile = 128;     // a CTA's tiles of the gradient are kScoreTile x kScoreTile
constexpr int kMaxTilesPerCta = 8;

// CTAs (bands x ctas_per_band), tiles per CTA and candidates kept per CTA.
struct ScoreSplit {
  int bands, ctas_per_band, tiles_per_cta, keep;
  int64_t n_candidates;
};

// The split for dy [M, N], x [M, K], top k, on a GPU with num_sms multiprocessors, where one tile
// holds blocks_per_tile blocks.  With no blocks (N or K zero) there is no CTA and no candidate.
inline ScoreSplit split_score_work(int64_t N, int64_t K, int64_t k, int num_sms, int blocks_per_tile) {
  ScoreSplit p{};
  p.bands = static_cast<int>((N + kScoreTile - 1) / kScoreTile);
  const int64_t tiles_k = (K + kScoreTile - 1) / kScoreTile;
  if (p.bands == 0 || tiles_k == 0 || k == 0) return p;
  // Enough CTAs to fill the GPU twice over, each with as many tiles (at most 8) as that allows.
  const int64_t want_ctas = 2 * static_cast<int64_t>(num_sms > 0 ? num_sms : 1);
  const int64_t per_band = (want_ctas + p.bands - 1) / p.bands;
  p.tiles_per_cta = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kMaxTilesPerCta, tiles_k / per_band)));
  p.ctas_per_band = static_cast<int>((tiles_k + p.tiles_per_cta - 1) / p.tiles_per_cta);
  p.keep = static_cast<int>(std::min<int64_t>(k, static_cast<int64_t>(p.tiles_per_cta) * blocks_per_tile));
  p.n_candidates = static_cast<int64_t>(p.bands) * p.ctas_per_band * p.keep;
  return p;
}

}  // namespace cuda
}  // namespace rigl_sparse
