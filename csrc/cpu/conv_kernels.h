// Block-sparse convolution kernels on raw pointers (implicit GEMM, no torch).
//
// A convolution is the block-sparse matmul of its input patches [M = N*OH*OW, K = KH*KW*C] with
// the weight matrix [out, K] (tap-major, channel-inner columns: k = (i*KW + j)*C + c).  These kernels
// never form the patches: each micro-kernel's operand rows are gathered from the zero-padded NHWC
// input into a small buffer right before use (a B-wide block of columns is B consecutive channels at
// one tap when B divides C), and the input gradient is scattered straight back onto the input.
#pragma once

#include "kernels.h"

namespace rigl_sparse {
namespace cpu {

// Geometry of a convolution on a zero-padded NHWC input [N][Hp][Wp][C].
struct ConvShape {
  int64_t N, Hp, Wp, C, OH, OW, KH, KW, SH, SW, DH, DW;

  int64_t rows() const { return N * OH * OW; }
  int64_t cols() const { return KH * KW * C; }
  // Offset in the input of output row m's receptive-field origin (tap (0, 0), channel 0).
  int64_t origin(int64_t m) const {
    const int64_t n = m / (OH * OW), r = m % (OH * OW), oh = r / OW, ow = r % OW;
    return ((n * Hp + oh * SH) * Wp + ow * SW) * C;
  }
  // Offset of kernel tap `tap` (= i * KW + j) from an origin.
  int64_t tap_offset(int64_t tap) const { return ((tap / KW) * DH * Wp + (tap % KW) * DW) * C; }
};

// dst[i][e] = patches[row i][c * B + e] as fp32 for `rows` rows with the given origins (-1: a row past
// M, zero); zero past the K real columns.
template <typename T, int B>
inline void gather_patch_block(const T* x, const ConvShape& g, const int64_t* origins, int rows, int64_t c,
                               float* dst) {
  const int64_t k0 = c * B, K = g.cols();
  if (g.C % B == 0) {
    const int64_t offset = g.tap_offset(k0 / g.C) + k0 % g.C;
    for (int i = 0; i < rows; ++i) {
      if (origins[i] < 0) {
        std::fill(dst + i * B, dst + (i + 1) * B, 0.0f);
        continue;
      }
      const T* src = x + origins[i] + offset;
#pragma omp simd
      for (int e = 0; e < B; ++e) dst[i * B + e] = to_float(src[e]);
    }
    return;
  }
  for (int i = 0; i < rows; ++i)
    for (int e = 0; e < B; ++e) {
      const int64_t k = k0 + e;
      dst[i * B + e] = (origins[i] < 0 || k >= K) ? 0.0f : to_float(x[origins[i] + g.tap_offset(k / g.C) + k % g.C]);
    }
}

// The origins of rows [m0, m0 + rows) (-1 past M).
inline void row_origins(const ConvShape& g, int64_t m0, int rows, int64_t* origins) {
  const int64_t M = g.rows();
  for (int i = 0; i < rows; ++i) origins[i] = m0 + i < M ? g.origin(m0 + i) : -1;
}

// Forward: out[M, n_out] = patches @ W.T (+ bias) over the row view, for row panels [t_begin, t_end).
//   blocks: [nnzb, B, B] fp32 holding W.T blocks; out: [M, n_out].
template <typename T, int B>
void conv_forward(const T* x, const ConvShape& g, const float* blocks, const int32_t* row_ptr,
                  const int32_t* row_slots, const int32_t* block_col, const float* bias, T* out, int64_t n_out,
                  int64_t t_begin, int64_t t_end) {
  constexpr int MR = rows_per_tile<B>();
  alignas(64) float acc[MR * B];
  alignas(64) float a[MR * B];
  int64_t origins[MR];
  const int64_t M = g.rows(), n_blocks_out = (n_out + B - 1) / B;
  for (int64_t t = t_begin; t < t_end; ++t) {
    row_origins(g, t * MR, MR, origins);
    const int64_t rows = std::min<int64_t>(MR, M - t * MR);
    for (int64_t j = 0; j < n_blocks_out; ++j) {
      std::fill(acc, acc + MR * B, 0.0f);
      for (int32_t p = row_ptr[j]; p < row_ptr[j + 1]; ++p) {
        const int64_t s = row_slots[p];
        gather_patch_block<T, B>(x, g, origins, MR, block_col[s], a);
        micro_kernel<B, MR>(a, B, 1, blocks + s * B * B, B, B, acc);
      }
      const int64_t col0 = j * B, cols = std::min<int64_t>(B, n_out - col0);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t n = 0; n < cols; ++n)
          out[(t * MR + i) * n_out + col0 + n] = from_float<T>(acc[i * B + n] + (bias ? bias[col0 + n] : 0.0f));
    }
  }
}

// Input gradient, scattered onto the padded input: dx[origin(m) + tap + channel] += (dy @ W)[m, k] for
// the channel blocks [cb_begin, cb_end) (B must divide C, so a thread owns whole channels: no races).
//   dy_panels: dy as row panels (pack_row_panels, MR = rows_per_tile<B>(), R block columns);
//   blocks: [nnzb, B, B] fp32 W blocks; dx: fp32 [N][Hp][Wp][C], accumulated into.
template <int B>
void conv_input_grad(const float* dy_panels, int64_t R, const ConvShape& g, const float* blocks,
                     const int32_t* col_ptr, const int32_t* col_slots, const int32_t* block_row, float* dx,
                     int64_t cb_begin, int64_t cb_end) {
  constexpr int MR = rows_per_tile<B>();
  alignas(64) float acc[MR * B];
  int64_t origins[MR];
  const int64_t M = g.rows(), panels = (M + MR - 1) / MR, channel_blocks = g.C / B;
  for (int64_t cb = cb_begin; cb < cb_end; ++cb)
    for (int64_t tap = 0; tap < g.KH * g.KW; ++tap) {
      const int64_t c = tap * channel_blocks + cb;
      if (col_ptr[c] == col_ptr[c + 1]) continue;
      const int64_t offset = g.tap_offset(tap) + cb * B;
      for (int64_t t = 0; t < panels; ++t) {
        std::fill(acc, acc + MR * B, 0.0f);
        const float* panel = dy_panels + t * R * MR * B;
        for (int32_t p = col_ptr[c]; p < col_ptr[c + 1]; ++p) {
          const int64_t s = col_slots[p];
          micro_kernel<B, MR>(panel + static_cast<int64_t>(block_row[s]) * MR * B, B, 1, blocks + s * B * B, B, B,
                              acc);
        }
        const int rows = static_cast<int>(std::min<int64_t>(MR, M - t * MR));
        row_origins(g, t * MR, rows, origins);
        for (int i = 0; i < rows; ++i) {
          float* dst = dx + origins[i] + offset;
#pragma omp simd
          for (int e = 0; e < B; ++e) dst[e] += acc[i * B + e];
        }
      }
    }
}

// Weight gradient on the active slots row_slots[p], p in [p_begin, p_end):
// out[s] = dy[:, rows(s)].T @ patches[:, cols(s)], the patches gathered kChunkRows rows at a time (a
// chunk of dy and of the patches stays in L1 while every row tile of the block uses it).
//   dy_cols: dy packed block-column-major [R][M][B] fp32 (pack_block_columns);
//   origins: row_origins of all M rows; out: [nnzb, B, B].
template <typename T, int B>
void conv_weight_grad(const float* dy_cols, const T* x, const ConvShape& g, const int64_t* origins,
                      const int32_t* row_slots, const int32_t* block_row, const int32_t* block_col, T* out,
                      int64_t p_begin, int64_t p_end) {
  constexpr int kChunkRows = B >= 64 ? 32 : 64;
  constexpr int MR = B >= 128 ? 2 : (B >= 64 ? 4 : (B >= 8 ? 8 : B));
  std::vector<float> acc(B * B);
  alignas(64) float patch[kChunkRows * B];
  const int64_t M = g.rows();
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t s = row_slots[p];
    const float* dy_slab = dy_cols + static_cast<int64_t>(block_row[s]) * M * B;
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int64_t m0 = 0; m0 < M; m0 += kChunkRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kChunkRows, M - m0));
      gather_patch_block<T, B>(x, g, origins + m0, rows, block_col[s], patch);
      for (int i0 = 0; i0 < B; i0 += MR)
        micro_kernel<B, MR>(dy_slab + m0 * B + i0, 1, B, patch, B, rows, acc.data() + i0 * B);
    }
    T* dst = out + s * B * B;
    for (int e = 0; e < B * B; ++e) dst[e] = from_float<T>(acc[e]);
  }
}

}  // namespace cpu
}  // namespace rigl_sparse
