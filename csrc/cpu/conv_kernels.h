// Block-sparse convolution kernels on raw pointers (implicit GEMM, no torch).
//
// A convolution is the block-sparse matmul of its input patches [M = N*OH*OW, K = KH*KW*C/G] with
// the weight matrix [out, K] (tap-major, channel-inner columns: k = (i*KW + j)*C/G + c; G groups).  These kernels
// never form the patches: each micro-kernel's operand rows are gathered from the zero-padded NHWC
// input into a small buffer right before use (a B-wide block of columns is B consecutive channels at
// one tap when B divides C), and the input gradient is scattered straight back onto the input (any
// B: the scatter goes column by column).
#pragma once

#include <type_traits>

#include "kernels.h"

namespace rigl_sparse {
namespace cpu {
namespace RIGL_SPARSE_ISA {

// The arithmetic of a ConvShape (kernel_table.h).
inline int64_t patch_rows(const ConvShape& g) { return g.N * g.OH * g.OW; }
inline int64_t group_channels(const ConvShape& g) { return g.C / g.G; }
inline int64_t patch_cols(const ConvShape& g) { return g.KH * g.KW * group_channels(g); }
// First input channel of the group of output channel (weight row) `row`.
inline int64_t channel_base(const ConvShape& g, int64_t row) { return (row / g.OG) * group_channels(g); }
// Offset of kernel tap `tap` (= i * KW + j) from an origin.
inline int64_t tap_offset(const ConvShape& g, int64_t tap) {
  return ((tap / g.KW) * g.DH * g.Wp + (tap % g.KW) * g.DW) * g.C;
}
// Offset from a patch row's origin of patch column k (tap-major, channel-inner) in group `base`.
inline int64_t column_offset(const ConvShape& g, int64_t k, int64_t base) {
  return tap_offset(g, k / group_channels(g)) + base + k % group_channels(g);
}
// Offset in the input of output row m's receptive-field origin (tap (0, 0), channel 0).
inline int64_t origin(const ConvShape& g, int64_t m) {
  const int64_t n = m / (g.OH * g.OW), r = m % (g.OH * g.OW), oh = r / g.OW, ow = r % g.OW;
  return ((n * g.Hp + oh * g.SH) * g.Wp + ow * g.SW) * g.C;
}

// dst[i][e] = patches[row i][c * B + e] as fp32 for `rows` rows with the given origins (-1: a row past
// M, zero) in the group starting at input channel `base`; zero past the K real columns.
template <typename T, int B>
inline void gather_patch_block(const T* x, const ConvShape& g, const int64_t* origins, int rows, int64_t c,
                               int64_t base, float* dst) {
  const int64_t k0 = c * B, K = patch_cols(g);
  if (group_channels(g) % B == 0) {
    const int64_t offset = column_offset(g, k0, base);
    for (int i = 0; i < rows; ++i) {
      if (origins[i] < 0) {
        fill_zero(dst + i * B, B);
        continue;
      }
      const T* src = x + origins[i] + offset;
      float* out = dst + static_cast<int64_t>(i) * B;
      if constexpr (std::is_same_v<T, float>) {
        std::memcpy(out, src, B * sizeof(float));
      } else {
        widen(src, B, out);
      }
    }
    return;
  }
  for (int i = 0; i < rows; ++i)
    for (int e = 0; e < B; ++e) {
      const int64_t k = k0 + e;
      dst[i * B + e] = (origins[i] < 0 || k >= K) ? 0.0f : to_float(x[origins[i] + column_offset(g, k, base)]);
    }
}

// The origins of rows [m0, m0 + rows) (-1 past M).
inline void row_origins(const ConvShape& g, int64_t m0, int rows, int64_t* origins) {
  const int64_t M = patch_rows(g);
  for (int i = 0; i < rows; ++i) origins[i] = m0 + i < M ? origin(g, m0 + i) : -1;
}

// Forward: out[M, n_out] = patches @ W.T (+ bias) over the row view, for row panels [t_begin, t_end).
// Each panel's MR patch rows are gathered at most once per group and block column, laid out as
// pack_block_columns would, and multiplied with every block row of that group that reads them.
//   blocks: [nnzb, B, B] fp32 holding W.T blocks; out: [M, n_out].
template <typename T, int B>
void conv_forward(const T* x, const ConvShape& g, const float* blocks, const int32_t* row_ptr,
                  const int32_t* row_slots, const int32_t* block_col, const float* bias, T* out, int64_t n_out,
                  int64_t t_begin, int64_t t_end) {
  constexpr int MR = rows_per_tile<B>();
  const int64_t M = patch_rows(g), C = (patch_cols(g) + B - 1) / B, n_blocks_out = (n_out + B - 1) / B;
  Buffer<> panel(C * MR * B);
  Buffer<int64_t> gathered(C);  // the (panel, group) whose rows panel holds at each block column
  for (int64_t c = 0; c < C; ++c) gathered.get()[c] = -1;
  alignas(64) float tile[MR * B];
  int64_t origins[MR];
  for (int64_t t = t_begin; t < t_end; ++t) {
    row_origins(g, t * MR, MR, origins);
    const int64_t rows = min64(MR, M - t * MR);
    for (int64_t j = 0; j < n_blocks_out; ++j) {
      // Gather the patch block columns this block row reads that the panel does not hold yet.
      const int64_t stamp = t * g.G + j * B / g.OG, base = channel_base(g, j * B);
      for (int32_t p = row_ptr[j]; p < row_ptr[j + 1]; ++p) {
        const int64_t c = block_col[row_slots[p]];
        if (gathered.get()[c] == stamp) continue;
        gather_patch_block<T, B>(x, g, origins, MR, c, base, panel.get() + c * MR * B);
        gathered.get()[c] = stamp;
      }
      panel_times_view<B>(panel.get(), MR * B, blocks, row_ptr, row_slots, block_col, j, tile);
      const int64_t col0 = j * B;
      store_tile<T, B>(tile, rows, min64(B, n_out - col0), bias ? bias + col0 : nullptr, out + t * MR * n_out + col0,
                       n_out);
    }
  }
}

// dx[origins[i] + column offset of c * B + e] += acc[i][e]: one block column of patch gradient added
// back onto the (group `base` of the) padded input.
template <int B>
inline void scatter_columns(const float* acc, int rows, const int64_t* origins, const ConvShape& g, int64_t c,
                            int64_t base, float* dx) {
  const int64_t k0 = c * B;
  if (group_channels(g) % B == 0) {  // the block is B consecutive channels of one tap
    const int64_t offset = column_offset(g, k0, base);
    for (int i = 0; i < rows; ++i) {
      float* dst = dx + origins[i] + offset;
#pragma omp simd
      for (int e = 0; e < B; ++e) dst[e] += acc[i * B + e];
    }
    return;
  }
  for (int e = 0; e < B && k0 + e < patch_cols(g); ++e) {
    const int64_t offset = column_offset(g, k0 + e, base);
    for (int i = 0; i < rows; ++i) dx[origins[i] + offset] += acc[i * B + e];
  }
}

// Input gradient, scattered onto the padded input: dx[origin(m) + tap + channel] += (dy @ W)[m, k] for
// the images [n_begin, n_end) (images never share input pixels, so threads owning different images
// never write the same place).  For each MR-row tile of dy, every kernel tap's block columns are
// done while the tile is in L1.
//   dy: [M, n_out]; blocks: [nnzb, B, B] fp32 W blocks; dx: fp32 [N][Hp][Wp][C], accumulated into.
template <typename T, int B>
void conv_input_grad(const T* dy, int64_t n_out, const ConvShape& g, const float* blocks, const int32_t* col_ptr,
                     const int32_t* col_slots, const int32_t* block_row, float* dx, int64_t n_begin,
                     int64_t n_end) {
  constexpr int MR = rows_per_tile<B>();
  const int64_t R = (n_out + B - 1) / B, n_cols = (patch_cols(g) + B - 1) / B;
  Buffer<> tile(R * MR * B);  // the MR rows of dy, block column by block column
  alignas(64) float acc[MR * B];
  int64_t origins[MR];
  const int64_t m_end = n_end * g.OH * g.OW;
  for (int64_t m0 = n_begin * g.OH * g.OW; m0 < m_end; m0 += MR) {
    const int rows = static_cast<int>(min64(MR, m_end - m0));
    pack_block_columns(dy + m0 * n_out, rows, MR, n_out, n_out, B, 0, R, tile.get());
    row_origins(g, m0, rows, origins);
    for (int64_t c = 0; c < n_cols; ++c) {
      // The column view lists a column's slots by block row, so each group's slots are consecutive:
      // accumulate a group's run, then add it onto that group's input channels.
      auto base_of = [&](int32_t p) { return channel_base(g, static_cast<int64_t>(block_row[col_slots[p]]) * B); };
      for (int32_t p = col_ptr[c]; p < col_ptr[c + 1];) {
        const int64_t base = base_of(p);
        int32_t run = p;
        while (run < col_ptr[c + 1] && base_of(run) == base) ++run;
        for (int h = 0; h < Tile<B>::CHUNKS; ++h)
          matmul_tile<B>(tile.get(), MR * B, col_slots + p, run - p, block_row, blocks,
                         h * Tile<B>::NV * Tile<B>::LANES, acc);
        p = run;
        scatter_columns<B>(acc, rows, origins, g, c, base, dx);
      }
    }
  }
}

// Weight gradient on the active slots row_slots[p], p in [p_begin, p_end):
// out[s] = dy[:, rows(s)].T @ patches[:, cols(s)].  The rows are walked kChunkRows at a time in the
// outer loop, so each chunk of dy and of the input is read once from memory for all the thread's
// slots; each slot's patch rows are gathered into L1 right before use.
//   dy_cols: dy packed block-column-major [R][M][B] fp32 (pack_block_columns); out: [nnzb, B, B].
template <typename T, int B>
void conv_weight_grad(const float* dy_cols, const T* x, const ConvShape& g, const int32_t* row_slots, const int32_t* block_row, const int32_t* block_col, T* out,
                      int64_t p_begin, int64_t p_end) {
  constexpr int kChunkRows = B >= 64 ? 32 : 64;
  const int64_t n_slots = p_end - p_begin, M = patch_rows(g);
  Buffer<> acc(n_slots * B * B);
  fill_zero(acc.get(), n_slots * B * B);
  alignas(64) float patch[kChunkRows * B];
  int64_t origins[kChunkRows];
  for (int64_t m0 = 0; m0 < M; m0 += kChunkRows) {
    const int rows = static_cast<int>(min64(kChunkRows, M - m0));
    row_origins(g, m0, rows, origins);
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t s = row_slots[p];
      const float* dy_chunk = dy_cols + static_cast<int64_t>(block_row[s]) * M * B + m0 * B;
      const int64_t base = channel_base(g, static_cast<int64_t>(block_row[s]) * B);
      gather_patch_block<T, B>(x, g, origins, rows, block_col[s], base, patch);
      micro_kernel<B, B>(dy_chunk, 1, B, patch, B, rows, acc.get() + (p - p_begin) * B * B);
    }
  }
  for (int64_t p = p_begin; p < p_end; ++p) {
    const float* slot_acc = acc.get() + (p - p_begin) * B * B;
    narrow(slot_acc, static_cast<const float*>(nullptr), B * B, out + static_cast<int64_t>(row_slots[p]) * B * B);
  }
}

}  // namespace RIGL_SPARSE_ISA
}  // namespace cpu
}  // namespace rigl_sparse
