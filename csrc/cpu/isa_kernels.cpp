// The kernel table of one instruction set.  setup.py (and CMake) compile this file once per variant,
// with -DRIGL_SPARSE_ISA=<name> and that variant's flags (baseline: none; avx2: -mavx2 -mfma -mf16c;
// avx512: -mavx512f -mavx512bw -mavx512vl -mavx512dq ...); it includes no torch header, so nothing
// compiled here for a wide instruction set can be shared with the portable entry points.
#include "conv_kernels.h"
#include "kernels.h"

#define RIGL_SPARSE_STRINGIFY_(x) #x
#define RIGL_SPARSE_STRINGIFY(x) RIGL_SPARSE_STRINGIFY_(x)
#define RIGL_SPARSE_CONCAT_(a, b) a##b
#define RIGL_SPARSE_CONCAT(a, b) RIGL_SPARSE_CONCAT_(a, b)

namespace rigl_sparse {
namespace cpu {
namespace RIGL_SPARSE_ISA {
namespace {

template <typename T, int... Bs>
TypedKernels<T> typed_kernels(std::integer_sequence<int, Bs...>) {
  return TypedKernels<T>{
      &pack_block_columns<T>,       &float_blocks<T>,
      {&view_rows<T, Bs>...},       {&dot_rows<T, Bs>...},      {&sdd_rows<T, Bs>...},
      &column_sums<T>,              {&conv_forward<T, Bs>...},  {&conv_input_grad<T, Bs>...},
      {&conv_weight_grad<T, Bs>...},
  };
}

template <int... Bs>
KernelTable make_table(std::integer_sequence<int, Bs...> sizes) {
  return KernelTable{
      RIGL_SPARSE_STRINGIFY(RIGL_SPARSE_ISA),
      kMaxLanes == 16 ? "16-float vectors, 32 registers: tiles up to 24 accumulators (e.g. 12 x 32 floats)"
      : kFma          ? (kMaxLanes == 8 ? "8-float vectors, 16 registers: 12 accumulators (6 x 16 floats)"
                                        : "4-float vectors, 32 registers: tiles up to 24 accumulators")
                      : "4-float vectors, 16 registers, no FMA: 8 accumulators (4 x 8 floats)",
      {rows_per_tile<Bs>()...},
      kDotRows,
      typed_kernels<float>(sizes),
      typed_kernels<bf16>(sizes),
      &band_scores,
  };
}

}  // namespace
}  // namespace RIGL_SPARSE_ISA

const KernelTable& RIGL_SPARSE_CONCAT(kernel_table_, RIGL_SPARSE_ISA)() {
  static const KernelTable table =
      RIGL_SPARSE_ISA::make_table(std::integer_sequence<int, 4, 8, 16, 32, 64, 128>{});
  return table;
}

}  // namespace cpu
}  // namespace rigl_sparse
