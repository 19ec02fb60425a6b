// rigl_sparse::dsd on the CPU: out[M, out_features] = x[M, K] @ W.T (+ bias), over the row view.
#include "common.h"

namespace rigl_sparse {
namespace cpu {

void dsd_out(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
             const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col, at::Tensor& out) {
  at::Tensor bias_f;
  if (bias.has_value()) {
    check_float_or_bf16(*bias, "bias");
    TORCH_CHECK(bias->numel() == out.size(1), "bias must have out_features = ", out.size(1), " entries");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  static const char* const names[4] = {"x", "row_ptr", "row_slots", "block_col"};
  view_matmul_out(x, values, /*transpose=*/true, row_ptr, row_slots, block_col,
                  bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, out, names);
}

}  // namespace cpu
}  // namespace rigl_sparse
