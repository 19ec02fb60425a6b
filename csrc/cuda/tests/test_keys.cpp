// Host tests of the grow-candidate sort keys (keys.h): their unsigned order must be the top-k order of
// the reference (score descending, NaN first, ties to the lower block index; no candidate last).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "../keys.h"
#include "expect.h"

using rigl_sparse::cuda::candidate_key;
using rigl_sparse::cuda::key_index;
using rigl_sparse::cuda::key_score;
using rigl_sparse::cuda::kNoCandidate;

struct Candidate {
  float score;
  uint32_t index;
};

// The reference order: NaN first, then larger score, then lower index.
static bool before(const Candidate& a, const Candidate& b) {
  const bool na = std::isnan(a.score), nb = std::isnan(b.score);
  if (na != nb) return na;
  if (!na && a.score != b.score) return a.score > b.score;
  return a.index < b.index;
}

int main() {
  const float inf = std::numeric_limits<float>::infinity();
  const float specials[] = {0.0f, -0.0f, 1e-38f, 1e-45f, 1.0f, 3.5f, 1e30f, inf, -1.0f, NAN, -NAN};
  for (float s : specials) {
    const uint64_t key = candidate_key(s, 7);
    EXPECT(key != kNoCandidate);
    EXPECT(key_index(key) == 7);
    if (std::isnan(s))
      EXPECT(std::isnan(key_score(key)));
    else
      EXPECT(key_score(key) == s);
  }
  EXPECT(key_index(kNoCandidate) == -1);
  EXPECT(candidate_key(0.0f, 0xFFFFFFFEu) > kNoCandidate);

  std::mt19937 rng(0);
  std::uniform_int_distribution<int> pick(0, 9);
  std::vector<Candidate> items;
  for (uint32_t i = 0; i < 4000; ++i) {
    const int p = pick(rng);
    const float s = p == 0 ? NAN : p == 1 ? inf : p < 5 ? static_cast<float>(pick(rng)) : std::ldexp(1.0f + i, -p * 7);
    items.push_back({s, (i * 2654435761u) % 100000u});
  }
  std::vector<Candidate> by_reference = items, by_key = items;
  std::sort(by_reference.begin(), by_reference.end(), before);
  std::sort(by_key.begin(), by_key.end(), [](const Candidate& a, const Candidate& b) {
    return candidate_key(a.score, a.index) > candidate_key(b.score, b.index);
  });
  for (size_t i = 0; i < items.size(); ++i) {
    EXPECT(by_reference[i].index == by_key[i].index);
    if (by_reference[i].index != by_key[i].index) break;
  }
  if (failures == 0) std::printf("keys: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
