// rigl_sparse::sdd on the CPU: out[s] = dy[:, rows(s)].T @ x[:, cols(s)] for every active slot.
#include "common.h"
#include "entry_points.h"

namespace rigl_sparse {
namespace cpu {

void check_sdd_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_slots,
                    const at::Tensor& block_row, const at::Tensor& block_col, const at::Tensor& out) {
  check_float_or_bf16(dy, "dy");
  check_float_or_bf16(x, "x");
  check_float_or_bf16(out, "out");
  check_index(row_slots, "row_slots");
  check_index(block_row, "block_row");
  check_index(block_col, "block_col");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type() && out.scalar_type() == x.scalar_type(),
              "dy, x and out must share a dtype");
  TORCH_CHECK(out.dim() == 3 && out.size(0) == block_row.numel() && out.size(1) == out.size(2),
              "out must be [nnzb, b, b]");
  TORCH_CHECK(dy.size(0) == x.size(0), "dy and x must have the same number of rows");
  const int64_t B = out.size(1);
  block_index(B);  // checked before anything runs
  const int64_t n_rows = (dy.size(1) + B - 1) / B, n_cols = (x.size(1) + B - 1) / B;
  TORCH_CHECK(row_slots.numel() == block_row.numel() && block_col.numel() == block_row.numel(),
              "row_slots, block_row and block_col must have one entry per block (", block_row.numel(), ")");
  check_range(row_slots, block_row.numel(), "row_slots");
  check_range(block_row, n_rows, "block_row");
  check_range(block_col, n_cols, "block_col");
}

void sdd_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_slots, const at::Tensor& block_row,
             const at::Tensor& block_col, at::Tensor& out) {
  check_sdd_args(dy, x, row_slots, block_row, block_col, out);
  const int64_t B = out.size(1), M = x.size(0), row_parts = sdd_row_parts(M);
  const bool slot_split = row_parts == 1;
  const int64_t parts = slot_split ? (M * out.numel() * B >= 2 * kMinWork ? at::get_num_threads() : 1) : row_parts;
  SlotAccumulators acc(out, slot_split ? 1 : row_parts);  // one per row part, one in all for a slot split
  sdd_parts(dy, x, row_slots, block_row, block_col, B, acc.parts(), parts, slot_split);
  acc.add_to_out();
}

}  // namespace cpu
}  // namespace rigl_sparse
