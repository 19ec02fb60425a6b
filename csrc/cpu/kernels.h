// Block-sparse CPU kernels on raw pointers: no torch, so C++ tests and other hosts can use them.
//
// Layout (see rigl_sparse/layout.py): a weight W[out, K] cut into B x B blocks; slot s holds block
// (block_row[s], block_col[s]) in values[s] (row-major B x B).  The row view lists each block row's
// slots (row_ptr/row_slots), the column view each block column's (col_ptr/col_slots).
//
// Every kernel works on a range of its parallel dimension, so the caller chooses the threading, and
// writes into caller-provided outputs.  Dense operands are first packed block-column-major
// (pack_block_columns: [n_blocks][M][B] fp32, zero past the real columns), so that every slab a
// kernel reads is contiguous (no TLB misses on long row strides, full use of the prefetcher).
// Results are written only inside the real [M, out] / [M, K] bounds.  Arithmetic is fp32; bf16 is
// widened on packing and rounded to nearest-even on store.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rigl_sparse {
namespace cpu {

struct bf16 {
  uint16_t bits;
};

inline float to_float(float v) { return v; }
inline float to_float(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
inline T from_float(float f);
template <>
inline float from_float<float>(float f) { return f; }
template <>
inline bf16 from_float<bf16>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{static_cast<uint16_t>(u >> 16)};
}

// Block columns for sdd: dst[c][m][j] = src[m * ld + c * B + j] as fp32 for block columns c in [c_begin, c_end); zero where
// c * B + j >= n_real (the padding of the last block).
template <typename T>
void pack_block_columns(const T* src, int64_t M, int64_t ld, int64_t n_real, int B, int64_t c_begin, int64_t c_end,
                        float* dst) {
  for (int64_t c = c_begin; c < c_end; ++c) {
    const int64_t width = std::max<int64_t>(0, std::min<int64_t>(B, n_real - c * B));
    float* out = dst + c * M * B;
    for (int64_t m = 0; m < M; ++m) {
      const T* row = src + m * ld + c * B;
      for (int64_t j = 0; j < width; ++j) out[m * B + j] = to_float(row[j]);
      for (int64_t j = width; j < B; ++j) out[m * B + j] = 0.0f;
    }
  }
}

// Row panels for dsd/dds: dst[t][c][i][j] = src[(t * MR + i) * ld + c * B + j] as fp32 for panels t in
// [t_begin, t_end); zero past the real rows (M) and columns (n_real).  One panel holds MR rows of
// every block column contiguously, so a micro-kernel's A operand is one contiguous MR x B chunk and
// all the chunks a row panel needs sit next to each other.
template <typename T>
void pack_row_panels(const T* src, int64_t M, int64_t ld, int64_t n_real, int B, int MR, int64_t C,
                     int64_t t_begin, int64_t t_end, float* dst) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      float* out = dst + (t * C + c) * MR * B;
      const int64_t width = std::max<int64_t>(0, std::min<int64_t>(B, n_real - c * B));
      for (int i = 0; i < MR; ++i) {
        const int64_t m = t * MR + i;
        const int64_t w = m < M ? width : 0;
        const T* row = src + m * ld + c * B;
        for (int64_t j = 0; j < w; ++j) out[i * B + j] = to_float(row[j]);
        for (int64_t j = w; j < B; ++j) out[i * B + j] = 0.0f;
      }
    }
  }
}

// Rows per micro-kernel tile for block size B: about 24 accumulator vectors of 16 floats stay in
// registers (with the block row and a broadcast, under the 32 AVX-512 registers), so each block row
// loaded feeds as many rows as the register file allows.
template <int B>
constexpr int rows_per_tile() {
  return B >= 128 ? 3 : (B >= 64 ? 6 : (B >= 32 ? 12 : 8));
}

#if defined(__AVX512F__)
// Sixteen floats, one AVX-512 register; aligned(4) allows unaligned loads and stores through memcpy.
typedef float vec16 __attribute__((vector_size(64), aligned(4)));

inline vec16 broadcast16(float s) { return (vec16)_mm512_set1_ps(s); }

inline vec16 load16(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store16(float* p, vec16 v) { std::memcpy(p, &v, sizeof v); }
#endif

// acc[MR][B] += A[MR][L] * Bm[L][B], with A(i, l) = a[i * a_i + l * a_l] and Bm row l at b + l * ldb.
// MR and B are compile-time so the accumulator tile lives in vector registers: with AVX-512 it is held
// in local vector variables for the whole L loop (the compiler would otherwise store the tile back to
// memory after every multiply-add), elsewhere the loops are left to the vectoriser.
template <int B, int MR>
inline void micro_kernel(const float* a, int64_t a_i, int64_t a_l, const float* b, int64_t ldb, int64_t L,
                         float* __restrict acc) {
#if defined(__AVX512F__)
  if constexpr (B % 16 == 0) {
    constexpr int V = B / 16;
    vec16 c[MR][V];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) c[i][v] = load16(acc + i * B + v * 16);
    for (int64_t l = 0; l < L; ++l) {
      vec16 row[V];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) row[v] = load16(b + l * ldb + v * 16);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const vec16 av = broadcast16(a[i * a_i + l * a_l]);
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) c[i][v] += av * row[v];
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) store16(acc + i * B + v * 16, c[i][v]);
    return;
  }
#endif
  for (int64_t l = 0; l < L; ++l) {
    const float* brow = b + l * ldb;
    for (int i = 0; i < MR; ++i) {
      const float av = a[i * a_i + l * a_l];
#pragma omp simd
      for (int n = 0; n < B; ++n) acc[i * B + n] += av * brow[n];
    }
  }
}

// out[:, j*B:(j+1)*B] = A @ blocks over the view, for output block columns j in [j_begin, j_end).
//   a: row panels of A (pack_row_panels with MR = rows_per_tile<B>()), C block columns;
//   blocks: [nnzb, B, B] fp32, already oriented (W.T blocks for dsd, W for dds);
//   ptr/slots/coord: the view; bias: [n_cols] fp32 or null; out: [M, n_cols].
template <typename T, int B>
void sparse_matmul(const float* a, int64_t M, int64_t C, const float* blocks, const int32_t* ptr,
                   const int32_t* slots, const int32_t* coord, const float* bias, T* out, int64_t n_cols,
                   int64_t j_begin, int64_t j_end) {
  constexpr int MR = rows_per_tile<B>();
  alignas(64) float acc[MR * B];
  const int64_t panels = (M + MR - 1) / MR;
  for (int64_t j = j_begin; j < j_end; ++j) {
    const int32_t begin = ptr[j], end = ptr[j + 1];
    const int64_t col0 = j * B, cols = std::min<int64_t>(B, n_cols - col0);
    for (int64_t t = 0; t < panels; ++t) {
      std::fill(acc, acc + MR * B, 0.0f);
      const float* panel = a + t * C * MR * B;
      for (int32_t p = begin; p < end; ++p) {
        const int64_t s = slots[p];
        micro_kernel<B, MR>(panel + static_cast<int64_t>(coord[s]) * MR * B, B, 1, blocks + s * B * B, B, B, acc);
      }
      const int64_t rows = std::min<int64_t>(MR, M - t * MR);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t n = 0; n < cols; ++n)
          out[(t * MR + i) * n_cols + col0 + n] = from_float<T>(acc[i * B + n] + (bias ? bias[col0 + n] : 0.0f));
    }
  }
}

// dvalues[s] = dy[:, rows(s)].T @ x[:, cols(s)] for the slots row_slots[p], p in [p_begin, p_end).
//   dy, x: packed [n_blocks][M][B] fp32; out: [nnzb, B, B].
template <typename T, int B>
void sdd(const float* dy, const float* x, int64_t M, const int32_t* row_slots, const int32_t* block_row,
         const int32_t* block_col, T* out, int64_t p_begin, int64_t p_end) {
  constexpr int MR = B >= 128 ? 2 : (B >= 64 ? 4 : (B >= 8 ? 8 : B));
  alignas(64) float acc[MR * B];
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t s = row_slots[p];
    const float* dy_slab = dy + static_cast<int64_t>(block_row[s]) * M * B;
    const float* x_slab = x + static_cast<int64_t>(block_col[s]) * M * B;
    for (int i0 = 0; i0 < B; i0 += MR) {
      std::fill(acc, acc + MR * B, 0.0f);
      micro_kernel<B, MR>(dy_slab + i0, 1, B, x_slab, B, M, acc);
      T* dst = out + s * B * B + static_cast<int64_t>(i0) * B;
      for (int e = 0; e < MR * B; ++e) dst[e] = from_float<T>(acc[e]);
    }
  }
}

// Block scores of one band of the dense gradient: grad is [rows * B, C * B] fp32 (block rows
// [r0, r0 + rows)); writes the Frobenius norm of each block, or -inf where active[r * C + c] != 0.
inline void band_scores(const float* grad, int64_t rows, int64_t C, int B, int64_t r0, const uint8_t* active,
                        float* scores) {
  const int64_t ld = C * B;
  std::vector<float> acc(C);
  for (int64_t r = 0; r < rows; ++r) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int i = 0; i < B; ++i) {
      const float* row = grad + (r * B + i) * ld;
      for (int64_t c = 0; c < C; ++c) {
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < B; ++j) sum += row[c * B + j] * row[c * B + j];
        acc[c] += sum;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t flat = (r0 + r) * C + c;
      scores[flat] = active[flat] ? -INFINITY : std::sqrt(acc[c]);
    }
  }
}

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
