// Block-sparse CPU kernels on raw pointers: no torch, so C++ tests and other hosts can use them.
//
// Layout (see rigl_sparse/layout.py): a weight W[out, K] cut into B x B blocks; slot s holds block
// (block_row[s], block_col[s]) in values[s] (row-major B x B).  The row view lists each block row's
// slots (row_ptr/row_slots), the column view each block column's (col_ptr/col_slots).
//
// Every kernel works on a range of rows and/or of its view, so the caller chooses the threading, and
// writes into caller-provided outputs.  Dense operands are read a cache-sized group of rows at a time
// and laid out as fp32 block columns in scratch that stays in L2, so that every slab a register tile
// reads is contiguous; no full-size copy of an operand is made.  Results are written only inside the
// real [M, out] / [M, K] bounds.  Arithmetic is fp32; bf16 is widened on packing and rounded to
// nearest-even on store.
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

// Rows of one register tile for block size B (the convolution kernels pad their row panels to it).
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

// dst[0, n) = src[0, n), in pieces of fixed size: the packing copies one block row (16-512 bytes) per call,
// and a copy whose length is known only at run time compiles to rep movsq or a call of memcpy, whose
// start-up took 12% of a 1024-wide forward (measured on Zen 3; 512 wide, 2 threads: forward 123 -> 147
// GFLOP/s).  The compiler turns a loop of plain copies back into one memcpy: the empty asm statement in the
// loop keeps it a loop (csrc/cpu/tests/check_inner_loops.py looks for such copies).
inline void copy_floats(const float* src, int64_t n, float* dst) {
  int64_t e = 0;
  for (; e + 16 <= n; e += 16) {
    std::memcpy(dst + e, src + e, 64);
    asm volatile("" : "+r"(e));  // e unknown to the compiler: no loop to turn into memcpy
  }
  if (e + 8 <= n) std::memcpy(dst + e, src + e, 32), e += 8;
  if (e + 4 <= n) std::memcpy(dst + e, src + e, 16), e += 4;
  if (e + 2 <= n) std::memcpy(dst + e, src + e, 8), e += 2;
  if (e < n) dst[e] = src[e];
}

// dst[0, n) = src[0, n) (+ add[0, n) where add is not null), rounded to T.
template <typename T>
inline void narrow(const float* src, const float* add, int64_t n, T* dst) {
  if (add) {
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) dst[e] = from_float<T>(src[e] + add[e]);
  } else if constexpr (sizeof(T) == sizeof(float)) {
    copy_floats(src, n, reinterpret_cast<float*>(dst));
  } else {
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) dst[e] = from_float<T>(src[e]);
  }
}

// dst[0, n) = src[0, n) as fp32.
template <typename T>
inline void widen(const T* src, int64_t n, float* dst) {
  if constexpr (sizeof(T) == sizeof(float)) {
    copy_floats(src, n, dst);
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
      if (width < B) fill_zero(out + width, B - width);  // a call of memset otherwise, for nothing
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
    // The last two tiles split their rows evenly when a full tile would leave one of fewer than 8
    // accumulators (fewer than the FMA units' latency times their number: that tile would run at half
    // rate).  AVX2, B = 32: tiles of 6, 6, 6, 6, 4, 4 rows instead of 6, 6, 6, 6, 6, 2.
    constexpr int left = ROWS - R0;
    constexpr bool split = left > S::MR && left < 2 * S::MR && (left - S::MR) * S::NV < 8;
    constexpr int mr = left < S::MR ? left : split ? (left + 1) / 2 : S::MR;
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

// acc[R][NV] += sum over the n slots slots[p] of A chunk (a + coord[s] * a_block) [R][B] @
// blocks[s][:, col0 : col0 + NV * LANES], each A chunk contiguous (row i at + i * B): the register tile of
// the forward and input-gradient kernels, its accumulators in registers across all the slots.
template <int B, int R, int NV = Tile<B>::NV, int LANES = Tile<B>::LANES>
__attribute__((always_inline)) inline void slot_products(const float* a, int64_t a_block, const int32_t* slots,
                                                         int32_t n, const int32_t* coord, const float* blocks,
                                                         int col0, vec<LANES> (&acc)[R][NV]) {
  constexpr int A_LINES = R * B / 16;  // 64-byte lines of one A chunk
  for (int32_t p = 0; p < n; ++p) {
    const int64_t s = slots[p];
    const float* ak = a + coord[s] * a_block;
    const float* b = blocks + s * B * B + col0;
    // The next slot's operands lie elsewhere, where no hardware prefetcher looks: fetch them a line per
    // step while this slot's products run.
    const int64_t s_next = p + 1 < n ? slots[p + 1] : s;
    const float* a_next = a + coord[s_next] * a_block;
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
      for (int i = 0; i < R; ++i) {
        const vec<LANES> av = broadcast<LANES>(ak[i * B + l]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[i][v] += av * row[v];
      }
    }
  }
}

// out[MR][NV * LANES] (row stride B) = sum over the n slots slots[p] of
// A chunk (panel + coord[s] * a_stride) [MR][B] @ blocks[s][:, col0 : col0 + NV * LANES].
template <int B>
inline void matmul_tile(const float* panel, int64_t a_stride, const int32_t* slots, int32_t n, const int32_t* coord,
                        const float* blocks, int col0, float* out) {
  using S = Tile<B>;
  constexpr int MR = S::MR, NV = S::NV, LANES = S::LANES;
  vec<LANES> acc[MR][NV] = {};
  slot_products<B, MR>(panel, a_stride, slots, n, coord, blocks, col0, acc);
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

// ---- dense rows times a sparse view: dsd (row view, W.T blocks) and dds (column view, W blocks) ------

// Calls f(Rows<R>{}) for the compile-time R == r, r in [1, MAX]: a tile of the last, partial row tile
// gets its own register tile instead of padding rows.
template <int R>
struct Rows {
  static constexpr int value = R;
};
template <int MAX, typename F>
__attribute__((always_inline)) inline void with_rows(int r, F&& f) {
  if constexpr (MAX > 1) {
    if (r < MAX) return with_rows<MAX - 1>(r, f);
  }
  f(Rows<MAX>{});
}

// out[R][cols) (row stride ldo) = (+ bias) sum over the n slots slots[p] of
//   A chunk (a + coord[s] * a_block) [R][B] @ blocks[s][:, col0 : col0 + cols)  (slot_products).
template <typename T, int B, int R>
inline void view_tile(const float* a, int64_t a_block, const int32_t* slots, int32_t n, const int32_t* coord,
                      const float* blocks, int col0, const float* bias, T* out, int64_t ldo, int64_t cols) {
  using S = Tile<B>;
  constexpr int NV = S::NV, LANES = S::LANES, WIDTH = NV * LANES;
  vec<LANES> acc[R][NV] = {};
  slot_products<B, R>(a, a_block, slots, n, coord, blocks, col0, acc);
  if (sizeof(T) == sizeof(float) && cols == WIDTH) {  // straight from the registers
    float* o = reinterpret_cast<float*>(out);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v)
        store<LANES>(o + i * ldo + v * LANES, bias ? acc[i][v] + load<LANES>(bias + v * LANES) : acc[i][v]);
    return;
  }
  alignas(64) float tile[R * WIDTH];
  for (int i = 0; i < R; ++i)
    for (int v = 0; v < NV; ++v) store<LANES>(tile + i * WIDTH + v * LANES, acc[i][v]);
  for (int i = 0; i < R; ++i) narrow(tile + i * WIDTH, bias, cols, out + i * ldo);
}

constexpr int64_t kL2Group = 192 << 10;  // bytes of packed rows that stay in L2 beside the other operand

// Bytes of packed rows a kernel takes at a time when it reads blocks_bytes of blocks once per group of
// rows: a group that stays in L2 (192 KiB) while the blocks are few; when they are many, and come from L3
// or memory, a group of up to 3 MiB (in L3), so that each pass over the blocks serves more rows.  Measured
// with 2 threads, fp32, density 0.1, on Zen 3 (AVX2, 512 KiB L2 per core, 32 MiB L3): 2048 x 4096 rows
// times a 16384 x 4096 layer's blocks (27 MB) went from 65 to 147 GFLOP/s (b = 32) and 106 to 159
// (b = 16); times a 4096 x 4096 layer's (6.7 MB), 128 to 158 (b = 32); from 1024 wide, unchanged.
inline int64_t group_bytes(int64_t blocks_bytes) {
  constexpr int64_t kL3Group = 3 << 20;
  return min64(kL3Group, max64(kL2Group, blocks_bytes / 8));
}

// out[m, j*B : (j+1)*B] (+ bias) = A[m, :] @ (the blocks of view entry j) for rows m in [m_begin, m_end)
// and view entries j in [j_begin, j_end): the forward (row view, W.T blocks) and the input gradient
// (column view, W blocks) of a layer, with any number of rows.
//   a: [M, a_cols] T, row stride lda; blocks: [nnzb, B, B] fp32, oriented [k][n]; ptr/slots/coord: the
//   view; bias: [n_cols] fp32 or null; out: [M, n_cols] T, row stride ldo.
// The rows are taken a group at a time (group_bytes: in L2, or in L3 when the blocks are many), where they are laid
// out as block columns (pack_block_columns: each row tile's chunk of a block column contiguous, fp32,
// zero-padded); for each output block column the group's row tiles pass under that column's blocks (a
// few KiB, in L1).  Read in place instead, the rows of a chunk lie a row stride apart, and at power-of-two
// widths in the same few L1 sets (measured: 10-15% slower).  The caller splits the ranges, over rows or
// over view entries.
template <typename T, int B>
void view_rows(const T* a, int64_t lda, int64_t a_cols, const float* blocks, const int32_t* ptr,
               const int32_t* slots, const int32_t* coord, const float* bias, T* out, int64_t ldo, int64_t n_cols,
               int64_t m_begin, int64_t m_end, int64_t j_begin, int64_t j_end) {
  using S = Tile<B>;
  constexpr int MR = S::MR, WIDTH = S::NV * S::LANES;
  const int64_t a_blocks = (a_cols + B - 1) / B;
  const int64_t group = max64(MR, group_bytes((ptr[j_end] - ptr[j_begin]) * B * B * 4) / (a_blocks * B * 4) / MR * MR);
  Buffer<> panel(min64(group, m_end - m_begin) * a_blocks * B);
  for (int64_t m0 = m_begin; m0 < m_end; m0 += group) {
    const int64_t rows = min64(group, m_end - m0);
    pack_block_columns(a + m0 * lda, rows, rows, lda, a_cols, B, 0, a_blocks, panel.get());
    for (int64_t j = j_begin; j < j_end; ++j) {
      const int32_t n = ptr[j + 1] - ptr[j];
      const int64_t col0 = j * B, cols = min64(B, n_cols - col0);
      for (int h = 0; h < S::CHUNKS && h * WIDTH < cols; ++h) {
        const int64_t c0 = col0 + h * WIDTH, width = min64(WIDTH, cols - h * WIDTH);
        for (int64_t t = 0; t < rows; t += MR) {
          with_rows<MR>(static_cast<int>(min64(MR, rows - t)), [&](auto r) {
            view_tile<T, B, decltype(r)::value>(panel.get() + t * B, rows * B, slots + ptr[j], n, coord, blocks,
                                                h * WIDTH, bias ? bias + c0 : nullptr, out + (m0 + t) * ldo + c0,
                                                ldo, width);
          });
        }
      }
    }
  }
}

// ---- the few-row forward: y = x @ W.T with W's blocks as stored ----------------------------------------

template <int N>
inline float horizontal_sum(vec<N> v) {
  if constexpr (N == 1) {
    return v[0];
  } else {
    vec<N / 2> lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return horizontal_sum<N / 2>(lo + hi);
  }
}

// Rows a dot-product tile takes: with one row, 8 block rows at a time; with two or three, 4.
constexpr int kDotRows = 3;

// sums[m][ii] = sum over the n slots slots[p] of a[m * lda + coord[s] * B : + B] . blocks[s][i0 + ii][:]
// for m < M, ii < IG: dot products along a block row of W as stored, so each block is read once and
// nothing is transposed (the operand of the forward when M is below a register tile).
template <int B, int M, int IG>
inline void dot_tile(const float* a, int64_t lda, const int32_t* slots, int32_t n, const int32_t* coord,
                     const float* blocks, int i0, float* sums) {
  constexpr int LANES = B < kMaxLanes ? B : kMaxLanes, V = B / LANES;
  vec<LANES> acc[M][IG] = {};
  for (int32_t p = 0; p < n; ++p) {
    const int64_t s = slots[p];
    const float* x = a + static_cast<int64_t>(coord[s]) * B;
    const float* w = blocks + s * B * B + i0 * B;
    if (p + 1 < n) {
      const float* w_next = blocks + static_cast<int64_t>(slots[p + 1]) * B * B + i0 * B;
      for (int e = 0; e < IG * B; e += 16) __builtin_prefetch(w_next + e);
    }
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      vec<LANES> xv[M];
#pragma GCC unroll 4
      for (int m = 0; m < M; ++m) xv[m] = load<LANES>(x + m * lda + v * LANES);
#pragma GCC unroll 8
      for (int ii = 0; ii < IG; ++ii) {
        const vec<LANES> wv = load<LANES>(w + ii * B + v * LANES);
#pragma GCC unroll 4
        for (int m = 0; m < M; ++m) acc[m][ii] += wv * xv[m];
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int ii = 0; ii < IG; ++ii) sums[m * IG + ii] = horizontal_sum<LANES>(acc[m][ii]);
}

// out[m, j*B + i] (+ bias) = sum over the slots s of block row j of a[m, coord[s]*B : +B] . blocks[s][i]
// for the M <= kDotRows rows and block rows j in [j_begin, j_end).
//   a: [M][lda] fp32, zero from the real columns up to lda >= C * B; blocks: [nnzb, B, B] fp32 as stored
//   (W, not W.T); out: [M, n_cols] T, row stride ldo.
template <typename T, int B>
void dot_rows(const float* a, int64_t lda, int64_t M, const float* blocks, const int32_t* row_ptr,
              const int32_t* row_slots, const int32_t* block_col, const float* bias, T* out, int64_t ldo,
              int64_t n_cols, int64_t j_begin, int64_t j_end) {
  with_rows<kDotRows>(static_cast<int>(M), [&](auto rows) {
    constexpr int MM = decltype(rows)::value, IG = (MM == 1 ? 8 : 4) < B ? (MM == 1 ? 8 : 4) : B;
    float sums[MM * IG];
    for (int64_t j = j_begin; j < j_end; ++j) {
      const int64_t col0 = j * B, cols = min64(B, n_cols - col0);
      for (int i0 = 0; i0 < cols; i0 += IG) {
        dot_tile<B, MM, IG>(a, lda, row_slots + row_ptr[j], row_ptr[j + 1] - row_ptr[j], block_col, blocks, i0,
                            sums);
        const int64_t width = min64(IG, cols - i0);
        for (int m = 0; m < MM; ++m) {
          if (bias)
            for (int64_t ii = 0; ii < width; ++ii) sums[m * IG + ii] += bias[col0 + i0 + ii];
          narrow(sums + m * IG, static_cast<const float*>(nullptr), width, out + m * ldo + col0 + i0);
        }
      }
    }
  });
}

// ---- the weight gradient on the active blocks ----------------------------------------------------------

// acc[s] += dy[m, rows(s)].T @ x[m, cols(s)] over rows m in [m_begin, m_end), for the slots slot_list[p],
// p in [p_begin, p_end); acc is [nnzb, B, B] fp32, indexed by slot.
//   dy: [M, n_out] T (row stride ldy); x: [M, n_in] T (row stride ldx).
// The rows go a chunk at a time in the outer loop, so a chunk of dy and of x is read from memory once for
// all the slots.  Each chunk is first laid out as block columns [n_blocks][rows][B] in scratch that stays
// in L2 (pack_block_columns): a slot then reads two contiguous slabs.  Read in place, the rows of a slab
// lie a row stride apart, and at power-of-two widths they all fall in the same few L1 sets (measured: the
// kernel at half speed from 1024 wide).  A chunk has at least 32 rows however wide the layer, and from B = 64
// at least 2B, with the next slot's accumulator block (16 KiB at B = 64, read and written once per chunk)
// prefetched while this slot runs.  Measured with 2 threads, fp32, density 0.1, on Zen 3 (AVX2): a
// 4096 x 4096 layer's weight gradient at B = 64 went from 47-78 to 78-118 GFLOP/s (chunks of 32 rows without
// the prefetch before); at B = 16 and 32 neither changed the rate at 512-4096 wide.
template <typename T, int B>
void sdd_rows(const T* dy, int64_t ldy, int64_t n_out, const T* x, int64_t ldx, int64_t n_in,
              const int32_t* slot_list, const int32_t* block_row, const int32_t* block_col, float* acc,
              int64_t p_begin, int64_t p_end, int64_t m_begin, int64_t m_end) {
  const int64_t R = (n_out + B - 1) / B, C = (n_in + B - 1) / B;
  const int64_t chunk = max64(B >= 64 ? 2 * B : 32, min64(256, kL2Group / ((R + C) * B * 4)));
  Buffer<> dy_cols(chunk * R * B), x_cols(chunk * C * B);
  for (int64_t m0 = m_begin; m0 < m_end; m0 += chunk) {
    const int64_t rows = min64(chunk, m_end - m0);
    pack_block_columns(dy + m0 * ldy, rows, rows, ldy, n_out, B, 0, R, dy_cols.get());
    pack_block_columns(x + m0 * ldx, rows, rows, ldx, n_in, B, 0, C, x_cols.get());
    for (int64_t p = p_begin; p < p_end; ++p) {
      const int64_t s = slot_list[p];
      if constexpr (B >= 64) {
        if (p + 1 < p_end) {
          const float* next = acc + static_cast<int64_t>(slot_list[p + 1]) * B * B;
          for (int e = 0; e < B * B; e += 16) __builtin_prefetch(next + e, 1, 2);
        }
      }
      micro_kernel<B, B>(dy_cols.get() + block_row[s] * rows * B, 1, B, x_cols.get() + block_col[s] * rows * B, B,
                         rows, acc + s * B * B);
    }
  }
}

// sums[e] += sum over rows m in [m_begin, m_end) of src[m * ld + e], e < n (the bias gradient).
template <typename T>
void column_sums(const T* src, int64_t ld, int64_t n, int64_t m_begin, int64_t m_end, float* sums) {
  for (int64_t m = m_begin; m < m_end; ++m) {
    const T* row = src + m * ld;
#pragma omp simd
    for (int64_t e = 0; e < n; ++e) sums[e] += to_float(row[e]);
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
