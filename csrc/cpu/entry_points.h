// The torch entry points of the CPU kernels, as the bindings (bindings.cpp) and the dispatcher's CPU
// kernels (dispatch.cpp) call them: each *_out function checks its arguments and writes into the outputs
// it is given.  Then the registration of those CPU kernels with torch's dispatcher (dispatch.cpp).
#pragma once

#include <pybind11/pybind11.h>
#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace rigl_sparse {
namespace cpu {
void dsd_out(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
             const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col, at::Tensor& out);
void dds_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr, const at::Tensor& col_slots,
             const at::Tensor& block_row, at::Tensor& out);
void dsd_backward_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_ptr,
                      const at::Tensor& col_slots, const at::Tensor& block_row, const at::Tensor& row_slots,
                      const at::Tensor& block_col, bool need_x, bool need_values, bool need_bias, at::Tensor& grad_x,
                      at::Tensor& grad_values, at::Tensor& grad_bias);
void check_sdd_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_slots,
                    const at::Tensor& block_row, const at::Tensor& block_col, const at::Tensor& out);
void sdd_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_slots, const at::Tensor& block_row,
             const at::Tensor& block_col, at::Tensor& out);
void block_scores_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row,
                      const at::Tensor& block_col, int64_t block_size, at::Tensor& scores_out, at::Tensor& index_out);
void conv_forward_out(const at::Tensor& x_padded, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col,
                      const std::vector<int64_t>& geometry, at::Tensor& out);
void conv_input_grad_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr,
                         const at::Tensor& col_slots, const at::Tensor& block_row,
                         const std::vector<int64_t>& geometry, at::Tensor& dx_padded);
void conv_weight_grad_out(const at::Tensor& dy, const at::Tensor& x_padded, const at::Tensor& row_slots,
                          const at::Tensor& block_row, const at::Tensor& block_col,
                          const std::vector<int64_t>& geometry, at::Tensor& out);
void register_kernels(pybind11::dict kernels);
void enter_forced_backend();
void exit_forced_backend();
std::tuple<int64_t, int64_t> call_counts();
}  // namespace cpu
}  // namespace rigl_sparse
