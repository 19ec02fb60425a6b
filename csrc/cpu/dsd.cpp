// rigl_sparse::dsd on the CPU: out[M, out_features] = x[M, K] @ W.T (+ bias), over the row view.
#include "common.h"

namespace rigl_sparse {
namespace cpu {

void dsd_out(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
             const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col, at::Tensor& out) {
  check_float_or_bf16(x, "x");
  check_float_or_bf16(values, "values");
  check_float_or_bf16(out, "out");
  check_index(row_ptr, "row_ptr");
  check_index(row_slots, "row_slots");
  check_index(block_col, "block_col");
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, b, b]");
  TORCH_CHECK(x.scalar_type() == values.scalar_type() && out.scalar_type() == x.scalar_type(),
              "x, values and out must share a dtype");
  const int64_t B = values.size(1), M = x.size(0), n_rows = row_ptr.numel() - 1;
  const int64_t n_cols = (x.size(1) + B - 1) / B, out_features = out.size(1);
  TORCH_CHECK(out.size(0) == M && (out_features + B - 1) / B == n_rows, "out must be [M, out_features] matching row_ptr");
  const at::Tensor blocks = float_blocks(values, /*transpose=*/true);  // W.T blocks: [s][k][n]
  at::Tensor bias_f;
  if (bias.has_value()) {
    check_float_or_bf16(*bias, "bias");
    TORCH_CHECK(bias->numel() == out_features, "bias must have out_features entries");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  const float* bias_ptr = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  dispatch(x.scalar_type(), B, [&]<typename T, int Bc>() {
    const at::Tensor a = row_panels(x, n_cols, Bc, rows_per_tile<Bc>());
    at::parallel_for(0, n_rows, 1, [&](int64_t begin, int64_t end) {
      sparse_matmul<T, Bc>(a.data_ptr<float>(), M, n_cols, blocks.data_ptr<float>(), row_ptr.data_ptr<int32_t>(),
                           row_slots.data_ptr<int32_t>(), block_col.data_ptr<int32_t>(), bias_ptr, out_ptr<T>(out),
                           out_features, begin, end);
    });
  });
}

}  // namespace cpu
}  // namespace rigl_sparse
