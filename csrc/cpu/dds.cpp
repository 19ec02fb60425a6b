// rigl_sparse::dds on the CPU: out[M, in_features] = dy[M, out] @ W, over the column view.
#include "common.h"

namespace rigl_sparse {
namespace cpu {

void dds_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr, const at::Tensor& col_slots,
             const at::Tensor& block_row, at::Tensor& out) {
  static const char* const names[4] = {"dy", "col_ptr", "col_slots", "block_row"};
  view_matmul_out(dy, values, /*transpose=*/false, col_ptr, col_slots, block_row, nullptr, out, names);
}

}  // namespace cpu
}  // namespace rigl_sparse
