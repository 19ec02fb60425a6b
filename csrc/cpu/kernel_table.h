// The CPU kernels of one instruction set as a table of plain function pointers (no torch).
//
// csrc/cpu/isa_kernels.cpp is compiled once per instruction set, each time with that set's compiler
// flags and -DRIGL_SPARSE_ISA=<name>; every function it defines lives in the namespace of that name,
// so no two variants share a symbol, and the only thing each exports is its table getter.  The torch
// entry points (checks, allocation, threading) are compiled for the portable baseline and call the
// table chosen at run time (isa.cpp), the way ATen dispatches its CPU_CAPABILITY kernels.
#pragma once

#include <cstdint>

namespace rigl_sparse {
namespace cpu {

struct bf16 {
  uint16_t bits;
};

// Block sizes the kernels are instantiated for; index with block_size_index.
constexpr int kBlockSizes[] = {4, 8, 16, 32, 64, 128};
constexpr int kNumBlockSizes = 6;

inline int block_size_index(int64_t b) {
  for (int i = 0; i < kNumBlockSizes; ++i)
    if (kBlockSizes[i] == b) return i;
  return -1;
}

// Geometry of a convolution on a zero-padded NHWC input [N][Hp][Wp][C], with G groups of OG output
// channels each (plain data: its arithmetic lives with the kernels, conv_kernels.h).
struct ConvShape {
  int64_t N, Hp, Wp, C, OH, OW, KH, KW, SH, SW, DH, DW, G, OG;
};

// The entries that depend on the element type T (float or bf16) of the dense operands and outputs.
// Every kernel works on a range [begin, end) of its parallel dimension; the caller threads it.
template <typename T>
struct TypedKernels {
  // Block columns [n_blocks][rows_out][B] of a dense [M, n] operand (pack_block_columns in kernels.h),
  // block columns [begin, end); rows_out >= M, the padding rows zero.
  void (*pack_block_columns)(const T* src, int64_t M, int64_t rows_out, int64_t ld, int64_t n_real, int B,
                             int64_t begin, int64_t end, float* dst);
  // Blocks [nnzb, B, B] as fp32, transposed when asked, slots [begin, end).
  void (*float_blocks)(const T* values, int B, bool transpose, int64_t begin, int64_t end, float* dst);
  // out[m, j*B:(j+1)*B] (+ bias) = a[m, :] @ (blocks of view entry j), rows [m_begin, m_end), view
  // entries [j_begin, j_end) (view_rows in kernels.h): dsd with W.T blocks, dds with W blocks.
  void (*view_rows[kNumBlockSizes])(const T* a, int64_t lda, int64_t a_cols, const float* blocks, const int32_t* ptr,
                                    const int32_t* slots, const int32_t* coord, const float* bias, T* out, int64_t ldo,
                                    int64_t n_cols, int64_t m_begin, int64_t m_end, int64_t j_begin, int64_t j_end);
  // The forward of M <= kDotRows rows with W's blocks as stored: a is fp32 [M][lda], zero-padded.
  void (*dot_rows[kNumBlockSizes])(const float* a, int64_t lda, int64_t M, const float* blocks,
                                   const int32_t* row_ptr, const int32_t* row_slots, const int32_t* block_col,
                                   const float* bias, T* out, int64_t ldo, int64_t n_cols, int64_t j_begin,
                                   int64_t j_end);
  // acc[s] += dy[m, rows(s)].T @ x[m, cols(s)] (acc fp32 [nnzb, B, B]) for the slots slot_list[p_begin, p_end)
  // over rows [m_begin, m_end).
  void (*sdd_rows[kNumBlockSizes])(const T* dy, int64_t ldy, int64_t n_out, const T* x, int64_t ldx, int64_t n_in,
                                   const int32_t* slot_list, const int32_t* block_row, const int32_t* block_col,
                                   float* acc, int64_t p_begin, int64_t p_end, int64_t m_begin, int64_t m_end);
  // sums[e] += sum of src[m * ld + e] over rows [m_begin, m_end), e < n (the bias gradient).
  void (*column_sums)(const T* src, int64_t ld, int64_t n, int64_t m_begin, int64_t m_end, float* sums);
  // Implicit-GEMM convolution: forward over row panels [begin, end), input gradient over images
  // [begin, end) (x is T, dx fp32), weight gradient over the slots row_slots[begin, end).
  void (*conv_forward[kNumBlockSizes])(const T* x, const ConvShape& g, const float* blocks, const int32_t* row_ptr,
                                       const int32_t* row_slots, const int32_t* block_col, const float* bias, T* out,
                                       int64_t n_out, int64_t begin, int64_t end);
  void (*conv_input_grad[kNumBlockSizes])(const T* dy, int64_t n_out, const ConvShape& g, const float* blocks,
                                          const int32_t* col_ptr, const int32_t* col_slots,
                                          const int32_t* block_row, float* dx, int64_t begin, int64_t end);
  void (*conv_weight_grad[kNumBlockSizes])(const float* dy_cols, const T* x, const ConvShape& g,
                                           const int32_t* row_slots, const int32_t* block_row, const int32_t* block_col, T* out,
                                           int64_t begin, int64_t end);
};

struct KernelTable {
  const char* isa;                      // "baseline", "avx2" or "avx512"
  const char* tile;                     // the register tiles, for info
  int rows_per_tile[kNumBlockSizes];    // MR: the rows of one register tile
  int dot_rows;                         // the most rows the few-row forward (dot_rows) takes
  TypedKernels<float> f32;
  TypedKernels<bf16> b16;
  // Block scores of a band of the dense gradient (see band_scores in kernels.h).
  void (*band_scores)(const float* grad, int64_t rows, int64_t C, int B, int64_t r0, const uint8_t* active,
                      float* scores);
};

// One getter per variant built; isa.cpp declares and calls those the build defines.
const KernelTable& kernel_table_baseline();
const KernelTable& kernel_table_avx2();
const KernelTable& kernel_table_avx512();

}  // namespace cpu
}  // namespace rigl_sparse
