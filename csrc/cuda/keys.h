// Sort keys of grow candidates, shared by the CUDA block_scores kernels and their host-side tests.
//
// A candidate (score, block index) becomes one 64-bit key whose unsigned order is the order of the
// top-k: higher score first, NaN above every number (so a caller sees non-finite scores), and among
// equal scores the lower block index first.  Key 0 means "no candidate" (an active block or a block
// outside the grid) and sorts last.  Plain C++: nothing here needs CUDA or torch.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define RS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RS_HOST_DEVICE inline
#endif

namespace rigl_sparse {
namespace cuda {

constexpr uint64_t kNoCandidate = 0;
constexpr uint32_t kNaNBits = 0xFFFFFFFFu;

// Order-preserving map of a float to uint32 (every NaN maps to the largest value).
RS_HOST_DEVICE uint32_t score_bits(float score) {
  if (score != score) return kNaNBits;
  uint32_t u;
  memcpy(&u, &score, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

RS_HOST_DEVICE float score_from_bits(uint32_t bits) {
  if (bits == kNaNBits) return NAN;
  const uint32_t u = (bits & 0x80000000u) ? (bits & 0x7FFFFFFFu) : ~bits;
  float score;
  memcpy(&score, &u, sizeof(score));
  return score;
}

// The key of block `index` (row-major r * C + c, below 2^32 - 1) with grow score `score`.
RS_HOST_DEVICE uint64_t candidate_key(float score, uint32_t index) {
  return (static_cast<uint64_t>(score_bits(score)) << 32) | (0xFFFFFFFFu - index);
}

RS_HOST_DEVICE float key_score(uint64_t key) { return score_from_bits(static_cast<uint32_t>(key >> 32)); }

RS_HOST_DEVICE int64_t key_index(uint64_t key) {
  return key == kNoCandidate ? -1 : static_cast<int64_t>(0xFFFFFFFFu - static_cast<uint32_t>(key));
}

}  // namespace cuda
}  // namespace rigl_sparse
