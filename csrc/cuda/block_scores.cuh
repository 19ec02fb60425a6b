// The streaming grow-score top-k of the `cuda` backend (torch-free): block_scores.  T is __half or
// __nv_bfloat16, B the block size (32, 64 or 128).  dy [M, N] and x [M, K] are row-major and
// contiguous; the launcher takes raw device pointers, a workspace and a stream and returns the launch's
// cudaError_t.
#pragma once

#include <algorithm>
#include <cub/device/device_radix_sort.cuh>

#include "gemm.cuh"
#include "keys.h"
#include "score_plan.h"

namespace rigl_sparse {
namespace cuda {

// block_scores: the k inactive blocks with the largest Frobenius norm of dy.T @ x.
//
// A CTA owns one 128-row band of the dense gradient G and `tiles` consecutive 128 x 128 tiles of it.
// Each tile is accumulated in registers (the sdd main loop over all M rows); every 16 x 16 fragment
// lies inside one B x B block, so each warp reduces its fragments' squares to one number per
// fragment, and the fragment sums of a block add up (in a fixed order) to the block's score.  Active
// blocks are masked, each block becomes a 64-bit key (keys.h), and the CTA keeps its keys in shared
// memory, sorts them (bitonic) and writes its best min(k, count) to global memory.  A device radix
// sort over those candidates (at most one per block) then yields the layer's top k.  Extra memory:
// the active-block mask and the candidates, O(blocks); G never leaves registers.
template <typename T>
using ScoreGemm = Gemm<T, kScoreTile, kScoreTile, 2, 4, true, false, 3>;

template <int B>
struct ScoreGeometry {
  static constexpr int kBlocksPerTile = (kScoreTile / B) * (kScoreTile / B);
  static constexpr int kMaxKeys = kMaxTilesPerCta * kBlocksPerTile;
  static constexpr int kSortSize = kMaxKeys < 32 ? 32 : kMaxKeys;  // a power of two
  static_assert((kSortSize & (kSortSize - 1)) == 0, "bitonic sort needs a power of two");
};

// Descending bitonic sort of n (a power of two) keys in shared memory by all threads of the CTA.
template <int THREADS>
__device__ void sort_keys_descending(uint64_t* keys, int n) {
  for (int size = 2; size <= n; size <<= 1)
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      for (int i = threadIdx.x; i < n / 2; i += THREADS) {
        const int lo = 2 * i - (i & (stride - 1)), hi = lo + stride;
        const bool descending = (lo & size) == 0;
        const uint64_t a = keys[lo], b = keys[hi];
        if ((a < b) == descending) {
          keys[lo] = b;
          keys[hi] = a;
        }
      }
    }
  __syncthreads();
}

template <typename T, int B>
__global__ void __launch_bounds__(ScoreGemm<T>::kThreads)
    block_scores_kernel(const T* __restrict__ dy, const T* __restrict__ x, const uint8_t* __restrict__ active, int M,
                        int N, int K, int R, int C, int tiles_per_cta, int keep, uint64_t* __restrict__ candidates,
                        bool dy_vec, bool x_vec) {
  using G = ScoreGemm<T>;
  using Geo = ScoreGeometry<B>;
  constexpr int kFragsPerSide = kScoreTile / 16, kFragsPerBlock = B / 16, kBlocksPerSide = kScoreTile / B;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ float fragment_sums[kFragsPerSide * kFragsPerSide];
  __shared__ uint64_t keys[Geo::kSortSize];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int band = blockIdx.y, row = band * kScoreTile;
  const int tiles_k = (K + kScoreTile - 1) / kScoreTile;
  const int first_tile = blockIdx.x * tiles_per_cta;
  const int n_tiles = min(tiles_per_cta, tiles_k - first_tile);
  for (int i = threadIdx.x; i < Geo::kSortSize; i += G::kThreads) keys[i] = kNoCandidate;

  for (int t = 0; t < n_tiles; ++t) {
    const int col = (first_tile + t) * kScoreTile;
    G gemm;
    gemm.run(smem, (M + kChunk - 1) / kChunk, [&](int step, int stage) {
      const int m0 = step * kChunk;
      G::load_a(smem, stage, dy + static_cast<int64_t>(m0) * N + row, N, M - m0, N - row, dy_vec);
      G::load_b(smem, stage, x + static_cast<int64_t>(m0) * K + col, K, M - m0, K - col, x_vec);
    });
    // One sum of squares per 16 x 16 fragment, reduced across the warp in registers.
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int i = 0; i < G::kFM; ++i)
#pragma unroll
      for (int j = 0; j < G::kFN; ++j) {
        float sum = 0.0f;
#pragma unroll
        for (int e = 0; e < gemm.acc[i][j].num_elements; ++e) sum += gemm.acc[i][j].x[e] * gemm.acc[i][j].x[e];
#pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
        if (lane == 0) {
          const int fr = (gemm.warp_m * G::kWarpM + i * 16) / 16, fc = (gemm.warp_n * G::kWarpN + j * 16) / 16;
          fragment_sums[fr * kFragsPerSide + fc] = sum;
        }
      }
    __syncthreads();
    for (int b = threadIdx.x; b < Geo::kBlocksPerTile; b += G::kThreads) {
      const int br = b / kBlocksPerSide, bc = b % kBlocksPerSide;
      const int r = band * kBlocksPerSide + br, c = (first_tile + t) * kBlocksPerSide + bc;
      uint64_t key = kNoCandidate;
      if (r < R && c < C && !active[static_cast<int64_t>(r) * C + c]) {
        float sum = 0.0f;
        for (int fr = 0; fr < kFragsPerBlock; ++fr)
          for (int fc = 0; fc < kFragsPerBlock; ++fc)
            sum += fragment_sums[(br * kFragsPerBlock + fr) * kFragsPerSide + bc * kFragsPerBlock + fc];
        key = candidate_key(sqrtf(sum), static_cast<uint32_t>(static_cast<int64_t>(r) * C + c));
      }
      keys[t * Geo::kBlocksPerTile + b] = key;
    }
    __syncthreads();  // fragment_sums is rewritten by the next tile
  }
  sort_keys_descending<G::kThreads>(keys, Geo::kSortSize);
  const int64_t cta = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  for (int i = threadIdx.x; i < keep; i += G::kThreads) candidates[cta * keep + i] = keys[i];
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads) decode_top_k(const uint64_t* __restrict__ sorted, int64_t n_sorted, int64_t k,
                             float* __restrict__ scores, int64_t* __restrict__ index) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= k) return;
  const uint64_t key = i < n_sorted ? sorted[i] : kNoCandidate;
  scores[i] = key == kNoCandidate ? -INFINITY : key_score(key);
  index[i] = key_index(key);
}

// The work split (score_plan.h) and CUB's temporary storage for its candidates.
struct ScorePlan : ScoreSplit {
  size_t sort_bytes;
};

inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

template <int B>
ScorePlan plan_block_scores(int N, int K, int64_t k, int num_sms) {
  ScorePlan p{};
  static_cast<ScoreSplit&>(p) = split_score_work(N, K, k, num_sms, ScoreGeometry<B>::kBlocksPerTile);
  p.sort_bytes = 0;
  if (p.n_candidates > 0)
    cub::DeviceRadixSort::SortKeysDescending(nullptr, p.sort_bytes, static_cast<const uint64_t*>(nullptr),
                                             static_cast<uint64_t*>(nullptr), p.n_candidates);
  return p;
}

// Bytes of device workspace block_scores needs: two candidate arrays and CUB's storage.
template <int B>
size_t block_scores_workspace_bytes(int N, int K, int64_t k, int num_sms) {
  const ScorePlan p = plan_block_scores<B>(N, K, k, num_sms);
  return 2 * round_up(static_cast<size_t>(p.n_candidates) * sizeof(uint64_t), 256) + p.sort_bytes;
}

template <typename T, int B>
cudaError_t block_scores(const T* dy, const T* x, const uint8_t* active, int M, int N, int K, int64_t k,
                         void* workspace, size_t workspace_bytes, int num_sms, float* scores, int64_t* index,
                         cudaStream_t stream) {
  using G = ScoreGemm<T>;
  if (k == 0) return cudaSuccess;
  ScorePlan p = plan_block_scores<B>(N, K, k, num_sms);
  const size_t array_bytes = round_up(static_cast<size_t>(p.n_candidates) * sizeof(uint64_t), 256);
  if (workspace_bytes < 2 * array_bytes + p.sort_bytes) return cudaErrorInvalidValue;
  auto* candidates = static_cast<uint64_t*>(workspace);
  auto* sorted = reinterpret_cast<uint64_t*>(static_cast<char*>(workspace) + array_bytes);
  void* sort_storage = static_cast<char*>(workspace) + 2 * array_bytes;
  const int R = (N + B - 1) / B, C = (K + B - 1) / B;
  if (p.bands > kMaxGridY) return cudaErrorInvalidConfiguration;
  if (p.n_candidates > 0) {
    if (cudaError_t err = allow_shared_memory(block_scores_kernel<T, B>, G::kSmemBytes); err != cudaSuccess)
      return err;
    const dim3 grid(p.ctas_per_band, p.bands);
    block_scores_kernel<T, B><<<grid, G::kThreads, G::kSmemBytes, stream>>>(
        dy, x, active, M, N, K, R, C, p.tiles_per_cta, p.keep, candidates, aligned16(dy) && N % kVec == 0,
        aligned16(x) && K % kVec == 0);
    if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    if (cudaError_t err = cub::DeviceRadixSort::SortKeysDescending(sort_storage, p.sort_bytes, candidates, sorted,
                                                                   p.n_candidates, 0, 64, stream);
        err != cudaSuccess)
      return err;
  }
  constexpr int threads = 256;
  decode_top_k<threads><<<static_cast<unsigned>((k + threads - 1) / threads), threads, 0, stream>>>(sorted, p.n_candidates,
                                                                                           k, scores, index);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rigl_sparse
