// Block-sparse CPU kernels on raw pointers: no torch, so C++ tests and other hosts can use them.
//
// Layout (see rigl_sparse/layout.py): a weight W[out, K] cut into B x B blocks; slot s holds block
// (block_row[s], block_col[s]) in values[s] (row-major B x B).  The row view lists each block row's
// slots (row_ptr/row_slots), the column view each block column's (col_ptr/col_slots).
//
// Every kernel works on a range of its parallel dimension, so the caller chooses the threading, and
// writes into caller-provided outputs.  Dense operands are first packed (row panels for dsd/dds,
// block columns for sdd) as fp32, so that every slab a kernel reads is contiguous.  Results are
// written only inside the real [M, out] / [M, K] bounds.  Arithmetic is fp32; bf16 is widened on
// packing and rounded to nearest-even on store.
//
// This header is compiled once per instruction set (isa_kernels.cpp): RIGL_SPARSE_ISA names the
// namespace that holds that compilation, so variants built with different flags never share a
// symbol.  Nothing here may instantiate a template of another namespace (std::vector, std::fill...):
// the linker would keep one copy of it for the whole extension, compiled for whichever instruction
// set it met first (tests/check_isa_symbols.py checks the objects for this).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#if defined(__SSE__)
#include <immintrin.h>
#endif

#include "kernel_table.h"

#ifndef RIGL_SPARSE_ISA
#error "define RIGL_SPARSE_ISA, the namespace of this instruction set's kernels"
#endif

namespace rigl_sparse {
namespace cpu {
namespace RIGL_SPARSE_ISA {

// ---- the instruction set this translation unit is compiled for -------------------------------------

#if defined(__AVX512F__)
constexpr int kMaxLanes = 16, kRegisters = 32;
constexpr bool kFma = true;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kMaxLanes = 8, kRegisters = 16;
constexpr bool kFma = true;
#elif defined(__aarch64__)
constexpr int kMaxLanes = 4, kRegisters = 32;
constexpr bool kFma = true;
#else  // x86-64 baseline (SSE2) and any other host: the compiler's own vectors
constexpr int kMaxLanes = 4, kRegisters = 16;
constexpr bool kFma = false;
#endif

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// A vector of N floats; loads and stores go through memcpy, so memory needs no alignment.
template <int N>
struct VecOf {
  typedef float type __attribute__((vector_size(N * sizeof(float))));
};
template <int N>
using vec = typename VecOf<N>::type;

template <int N>
inline vec<N> load(const float* p) {
  vec<N> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <int N>
inline void store(float* p, vec<N> v) {
  std::memcpy(p, &v, sizeof v);
}
template <int N>
inline vec<N> broadcast(float s) {
#if defined(__AVX512F__)
  if constexpr (N == 16) return (vec<N>)_mm512_set1_ps(s);
#endif
#if defined(__AVX__)
  if constexpr (N == 8) return (vec<N>)_mm256_set1_ps(s);
#endif
#if defined(__SSE__)
  if constexpr (N == 4) return (vec<N>)_mm_set1_ps(s);
#endif
  return s - (vec<N>){};  // elsewhere the compiler's own broadcast (s - 0 is exactly s)
}

// The register tile of the kernels for block size B: MR rows by NV vectors of LANES floats, chosen so
// that the MR * NV accumulators, the NV vectors of the B operand and one broadcast stay in the
// register file (AVX-512: 32 registers, up to 24 accumulators; AVX2: 16 registers, 12 accumulators,
// e.g. 6 rows x 16 floats; SSE2 without FMA: 8, which leaves room for the products).  A block row
// wider than NV vectors is done in CHUNKS column chunks.
template <int B>
struct Tile {
  // With 32 registers a block row of one full vector would leave one broadcast per multiply-add (the
  // loads, not the FMAs, would set the pace): split it in two half-width vectors instead.
  static constexpr int LANES = B < kMaxLanes ? B : (kRegisters >= 32 && B == kMaxLanes && B >= 16) ? B / 2 : kMaxLanes;
  static constexpr int V = B / LANES;  // vectors across one block row
  static constexpr int MAX_NV = kRegisters >= 32 ? 4 : 2;
  static constexpr int NV = V < MAX_NV ? V : MAX_NV;
  static constexpr int CHUNKS = V / NV;
  static constexpr int MR = kRegisters >= 32 ? (NV == 1 ? 16 : NV == 2 ? 12 : 6)
                            : kFma            ? (NV == 1 ? 12 : 6)
                                              : (NV == 1 ? 8 : 4);
  static_assert(B % LANES == 0 && V % NV == 0, "block sizes are powers of two from 4");
};

// Rows of one register tile for block size B: dsd and dds pad their dense operand to a multiple of it.
template <int B>
constexpr int rows_per_tile() {
  return Tile<B>::MR;
}

// Scratch memory of a kernel call (64-byte aligned, uninitialised).
template <typename E = float>
class Buffer {
 public:
  explicit Buffer(int64_t n)
      : data_(static_cast<E*>(std::aligned_alloc(64, static_cast<size_t>((max64(n, 1) * sizeof(E) + 63) / 64 * 64)))) {
    if (data_ == nullptr) throw std::bad_alloc();
  }
  ~Buffer() { std::free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  E* get() const { return data_; }

 private:
  E* data_;
};

inline void fill_zero(float* p, int64_t n) { std::memset(p, 0, static_cast<size_t>(n) * sizeof(float)); }

// ---- element types ----------------------------------------------------------------------------------

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
inline float from_float<float>(float f) {
  return f;
}
template <>
inline bf16 from_float<bf16>(float f) {  // branch-free, so that loops of it vectorise
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return bf16{static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded)};
}

// dst[0, n) = src[0, n) (+ add[0, n) where add is not null), rounded to T.
template <typename T>
inline void narrow(const float* src, const float* add, int64_t n, T* dst) {
  if (add) {
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) dst[e] = from_float<T>(src[e] + add[e]);
  } else {
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) dst[e] = from_float<T>(src[e]);
  }
}

// dst[0, n) = src[0, n) as fp32.
template <typename T>
inline void widen(const T* src, int64_t n, float* dst) {
  if constexpr (sizeof(T) == sizeof(float)) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t u = static_cast<uint32_t>(src[j].bits) << 16;
      std::memcpy(dst + j, &u, sizeof u);
    }
  }
}

// ---- packing ----------------------------------------------------------------------------------------

// Block columns: dst[c][m][j] = src[m * ld + c * B + j] as fp32 for block columns c in [c_begin, c_end)
// and rows m < rows_out; zero where m >= M (padding rows up to a whole register tile) or
// c * B + j >= n_real (the padding of the last block).  Every kernel's dense operand has this layout:
// the MR x B chunk of rows [t * MR, (t + 1) * MR) of block column c is contiguous, and the chunks of
// consecutive row tiles follow each other, so walking the row tiles streams through memory.
template <typename T>
void pack_block_columns(const T* src, int64_t M, int64_t rows_out, int64_t ld, int64_t n_real, int B, int64_t c_begin,
                        int64_t c_end, float* dst) {
  for (int64_t m = 0; m < rows_out; ++m)  // row by row: each source row is read once, front to back
    for (int64_t c = c_begin; c < c_end; ++c) {
      const int64_t width = m < M ? max64(0, min64(B, n_real - c * B)) : 0;
      float* out = dst + (c * rows_out + m) * B;
      widen(src + m * ld + c * B, width, out);
      fill_zero(out + width, B - width);
    }
}

// Blocks [nnzb, B, B] as fp32, transposed when asked (dsd multiplies by W.T), slots [s_begin, s_end).
template <typename T>
void float_blocks(const T* values, int B, bool transpose, int64_t s_begin, int64_t s_end, float* dst) {
  const int64_t BB = static_cast<int64_t>(B) * B;
  for (int64_t s = s_begin; s < s_end; ++s) {
    const T* src = values + s * BB;
    float* out = dst + s * BB;
    if (!transpose) {
      widen(src, BB, out);
      continue;
    }
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) out[j * B + i] = to_float(src[i * B + j]);
  }
}

// ---- micro-kernels ----------------------------------------------------------------------------------

// c[MR][NV * LANES] (row stride ldc) += A[MR][L] * Bm[L][NV * LANES], A(i, l) = a[i * a_i + l * a_l],
// Bm row l at b + l * ldb.  The accumulators live in vector registers for the whole L loop.
template <int MR, int NV, int LANES>
__attribute__((always_inline)) inline void tile_accumulate(const float* a, int64_t a_i, int64_t a_l, const float* b, int64_t ldb, int64_t L,
                            float* c, int64_t ldc) {
  vec<LANES> acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = load<LANES>(c + i * ldc + v * LANES);
  for (int64_t l = 0; l < L; ++l) {
    vec<LANES> row[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) row[v] = load<LANES>(b + l * ldb + v * LANES);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const vec<LANES> av = broadcast<LANES>(a[i * a_i + l * a_l]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] += av * row[v];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) store<LANES>(c + i * ldc + v * LANES, acc[i][v]);
}

// Rows [R0, ROWS) of acc[ROWS][B] in register tiles of at most MR rows, one column chunk at c.
template <int B, int R0, int ROWS>
inline void accumulate_rows(const float* a, int64_t a_i, int64_t a_l, const float* b, int64_t ldb, int64_t L,
                            float* c) {
  if constexpr (R0 < ROWS) {
    using S = Tile<B>;
    constexpr int mr = ROWS - R0 < S::MR ? ROWS - R0 : S::MR;
    tile_accumulate<mr, S::NV, S::LANES>(a + R0 * a_i, a_i, a_l, b, ldb, L, c + R0 * B, B);
    accumulate_rows<B, R0 + mr, ROWS>(a, a_i, a_l, b, ldb, L, c);
  }
}

// acc[ROWS][B] += A[ROWS][L] * Bm[L][B], with A(i, l) = a[i * a_i + l * a_l] and Bm row l at b + l * ldb:
// register tiles over rows and column chunks, the L loop cut into pieces whose B operand stays in L1.
template <int B, int ROWS>
inline void micro_kernel(const float* a, int64_t a_i, int64_t a_l, const float* b, int64_t ldb, int64_t L,
                         float* acc) {
  using S = Tile<B>;
  constexpr int64_t kPiece = 4096 / B > 8 ? 4096 / B : 8;  // 16 KiB of each operand
  for (int64_t l0 = 0; l0 < L; l0 += kPiece) {
    const int64_t len = min64(kPiece, L - l0);
    for (int h = 0; h < S::CHUNKS; ++h)
      accumulate_rows<B, 0, ROWS>(a + l0 * a_l, a_i, a_l, b + l0 * ldb + h * S::NV * S::LANES, ldb, len,
                                  acc + h * S::NV * S::LANES);
  }
}

// out[MR][NV * LANES] (row stride B) = sum over the n slots slots[p] of
// A chunk (panel + coord[s] * a_stride) [MR][B] @ blocks[s][:, col0 : col0 + NV * LANES]: the
// accumulators stay in registers across all the slots of one output block.
template <int B>
inline void matmul_tile(const float* panel, int64_t a_stride, const int32_t* slots, int32_t n, const int32_t* coord,
                        const float* blocks, int col0, float* out) {
  using S = Tile<B>;
  constexpr int MR = S::MR, NV = S::NV, LANES = S::LANES;
  constexpr int A_LINES = MR * B / 16;  // 64-byte lines of one A chunk
  vec<LANES> acc[MR][NV] = {};
  for (int32_t p = 0; p < n; ++p) {
    const int64_t s = slots[p];
    const float* a = panel + coord[s] * a_stride;
    const float* b = blocks + s * B * B + col0;
    // The next slot's operands jump elsewhere in memory, where no hardware prefetcher looks: fetch
    // them a line per step while this slot's products run.
    const int64_t s_next = p + 1 < n ? slots[p + 1] : s;
    const float* a_next = panel + coord[s_next] * a_stride;
    const float* b_next = blocks + s_next * B * B + col0;
#pragma GCC unroll 1
    for (int l = 0; l < B; ++l) {
      __builtin_prefetch(b_next + l * B);
      if constexpr (NV * LANES > 16) __builtin_prefetch(b_next + l * B + 16);
      if (l < A_LINES) __builtin_prefetch(a_next + l * 16);
      vec<LANES> row[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) row[v] = load<LANES>(b + l * B + v * LANES);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const vec<LANES> av = broadcast<LANES>(a[i * B + l]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] += av * row[v];
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) store<LANES>(out + i * B + col0 + v * LANES, acc[i][v]);
}

// dst[i][0, cols) = tile[i][0, cols) (+ bias[0, cols)) for rows i < rows, row stride ld.
template <typename T, int B>
inline void store_tile(const float* tile, int64_t rows, int64_t cols, const float* bias, T* dst, int64_t ld) {
  for (int64_t i = 0; i < rows; ++i) narrow(tile + i * B, bias, cols, dst + i * ld);
}

// tile[MR][B] = the MR rows of A at panel (block column c at panel + c * a_stride) times the blocks
// of view entry j (all column chunks).
template <int B>
inline void panel_times_view(const float* panel, int64_t a_stride, const float* blocks, const int32_t* ptr,
                             const int32_t* slots, const int32_t* coord, int64_t j, float* tile) {
  using S = Tile<B>;
  for (int h = 0; h < S::CHUNKS; ++h)
    matmul_tile<B>(panel, a_stride, slots + ptr[j], ptr[j + 1] - ptr[j], coord, blocks, h * S::NV * S::LANES, tile);
}

// out[:, j*B:(j+1)*B] = A @ blocks over the view, for output block columns j in [j_begin, j_end).
//   a: A as block columns [*][Mp][B] (pack_block_columns with rows_out = Mp, M rounded up to a
//      multiple of MR = rows_per_tile<B>());
//   blocks: [nnzb, B, B] fp32, already oriented (W.T blocks for dsd, W for dds);
//   ptr/slots/coord: the view; bias: [n_cols] fp32 or null; out: [M, n_cols].
// For each output block column, the column chunks of its blocks (a few KiB each) stay in L1 while
// a group of row tiles, whose A chunks fit in L2, passes under them once per chunk.
template <typename T, int B>
void sparse_matmul(const float* a, int64_t M, const float* blocks, const int32_t* ptr,
                   const int32_t* slots, const int32_t* coord, const float* bias, T* out, int64_t n_cols,
                   int64_t j_begin, int64_t j_end) {
  using S = Tile<B>;
  constexpr int MR = S::MR, WIDTH = S::NV * S::LANES;
  constexpr int64_t kGroupBytes = 256 << 10;
  alignas(64) float tile[MR * B];
  const int64_t panels = (M + MR - 1) / MR, a_stride = panels * MR * B;
  for (int64_t j = j_begin; j < j_end; ++j) {
    const int32_t n = ptr[j + 1] - ptr[j];
    const int64_t col0 = j * B, cols = min64(B, n_cols - col0);
    const int64_t group = max64(1, kGroupBytes / (max64(n, 1) * MR * B * static_cast<int64_t>(sizeof(float))));
    for (int64_t t0 = 0; t0 < panels; t0 += group) {
      for (int h = 0; h < S::CHUNKS && h * WIDTH < cols; ++h) {
        for (int64_t t = t0; t < min64(t0 + group, panels); ++t) {
          matmul_tile<B>(a + t * MR * B, a_stride, slots + ptr[j], n, coord, blocks, h * WIDTH, tile);
          store_tile<T, B>(tile + h * WIDTH, min64(MR, M - t * MR), min64(WIDTH, cols - h * WIDTH),
                           bias ? bias + col0 + h * WIDTH : nullptr, out + t * MR * n_cols + col0 + h * WIDTH,
                           n_cols);
        }
      }
    }
  }
}

// dvalues[s] = dy[:, rows(s)].T @ x[:, cols(s)] for the slots row_slots[p], p in [p_begin, p_end).
//   dy, x: packed [n_blocks][M][B] fp32; out: [nnzb, B, B].
template <typename T, int B>
void sdd(const float* dy, const float* x, int64_t M, const int32_t* row_slots, const int32_t* block_row,
         const int32_t* block_col, T* out, int64_t p_begin, int64_t p_end) {
  Buffer<> acc(static_cast<int64_t>(B) * B);
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t s = row_slots[p];
    const float* dy_slab = dy + static_cast<int64_t>(block_row[s]) * M * B;
    const float* x_slab = x + static_cast<int64_t>(block_col[s]) * M * B;
    fill_zero(acc.get(), B * B);
    micro_kernel<B, B>(dy_slab, 1, B, x_slab, B, M, acc.get());
    narrow(acc.get(), static_cast<const float*>(nullptr), B * B, out + s * B * B);
  }
}

// Block scores of one band of the dense gradient: grad is [rows * B, C * B] fp32 (block rows
// [r0, r0 + rows)); writes the Frobenius norm of each block, or -inf where active[r * C + c] != 0.
inline void band_scores(const float* grad, int64_t rows, int64_t C, int B, int64_t r0, const uint8_t* active,
                        float* scores) {
  const int64_t ld = C * B;
  Buffer<> acc(C);
  for (int64_t r = 0; r < rows; ++r) {
    fill_zero(acc.get(), C);
    for (int i = 0; i < B; ++i) {
      const float* row = grad + (r * B + i) * ld;
      for (int64_t c = 0; c < C; ++c) {
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j < B; ++j) sum += row[c * B + j] * row[c * B + j];
        acc.get()[c] += sum;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      const int64_t flat = (r0 + r) * C + c;
      scores[flat] = active[flat] ? -INFINITY : std::sqrt(acc.get()[c]);
    }
  }
}

}  // namespace RIGL_SPARSE_ISA
}  // namespace cpu
}  // namespace rigl_sparse
