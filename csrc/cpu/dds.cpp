// rigl_sparse::dds on the CPU: out[M, in_features] = dy[M, out] @ W, over the column view.
#include "common.h"

namespace rigl_sparse {
namespace cpu {

void dds_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr, const at::Tensor& col_slots,
             const at::Tensor& block_row, at::Tensor& out) {
  check_float_or_bf16(dy, "dy");
  check_float_or_bf16(values, "values");
  check_float_or_bf16(out, "out");
  check_index(col_ptr, "col_ptr");
  check_index(col_slots, "col_slots");
  check_index(block_row, "block_row");
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, b, b]");
  TORCH_CHECK(dy.scalar_type() == values.scalar_type() && out.scalar_type() == dy.scalar_type(),
              "dy, values and out must share a dtype");
  const int64_t B = values.size(1), M = dy.size(0), n_cols = col_ptr.numel() - 1;
  const int64_t n_rows = (dy.size(1) + B - 1) / B, in_features = out.size(1);
  TORCH_CHECK(out.size(0) == M && (in_features + B - 1) / B == n_cols, "out must be [M, in_features] matching col_ptr");
  const at::Tensor blocks = float_blocks(values, /*transpose=*/false);  // W blocks: [s][k][n]
  dispatch(dy.scalar_type(), B, [&]<typename T, int Bc>() {
    const at::Tensor a = row_panels(dy, n_rows, Bc, rows_per_tile<Bc>());
    at::parallel_for(0, n_cols, 1, [&](int64_t begin, int64_t end) {
      sparse_matmul<T, Bc>(a.data_ptr<float>(), M, n_rows, blocks.data_ptr<float>(), col_ptr.data_ptr<int32_t>(),
                           col_slots.data_ptr<int32_t>(), block_row.data_ptr<int32_t>(), nullptr, out_ptr<T>(out),
                           in_features, begin, end);
    });
  });
}

}  // namespace cpu
}  // namespace rigl_sparse
