// rigl_sparse::dsd on the CPU: out[M, out_features] = x[M, K] @ W.T (+ bias), over the row view; and its
// backward, the three gradients in one pass over the rows.
#include "common.h"
#include "entry_points.h"

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

namespace {

// Rows of one step of the fused backward: its chunk of dy is read from memory by the input gradient and
// found again in the cache by the weight gradient and the bias sums.
constexpr int64_t kBackwardChunk = 128;

void check_backward_args(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values,
                         const at::Tensor& col_ptr, const at::Tensor& col_slots, const at::Tensor& block_row,
                         const at::Tensor& row_slots, const at::Tensor& block_col, const at::Tensor& grad_x,
                         const at::Tensor& grad_values, const at::Tensor& grad_bias) {
  check_sdd_args(dy, x, row_slots, block_row, block_col, grad_values);
  check_float_or_bf16(values, "values");
  check_float_or_bf16(grad_x, "grad_x");
  if (grad_bias.defined()) check_float_or_bf16(grad_bias, "grad_bias");
  check_index(col_ptr, "col_ptr");
  check_index(col_slots, "col_slots");
  TORCH_CHECK(values.sizes() == grad_values.sizes() && values.scalar_type() == x.scalar_type(),
              "values must be [nnzb, b, b] of x's dtype, as grad_values");
  TORCH_CHECK(grad_x.sizes() == x.sizes() && grad_x.scalar_type() == x.scalar_type(), "grad_x must be x's shape and dtype");
  TORCH_CHECK(!grad_bias.defined() ||
                  (grad_bias.dim() == 1 && grad_bias.size(0) == dy.size(1) && grad_bias.scalar_type() == x.scalar_type()),
              "grad_bias must be [out_features] of x's dtype");
  const int64_t B = values.size(1);
  TORCH_CHECK(col_ptr.numel() - 1 == (x.size(1) + B - 1) / B, "col_ptr must have one entry per block column of x, plus one");
  check_view(col_ptr, col_slots, block_row, values.size(0), (dy.size(1) + B - 1) / B, "col_ptr", "col_slots",
             "block_row");
}

}  // namespace

void dsd_backward_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& values, const at::Tensor& col_ptr,
                      const at::Tensor& col_slots, const at::Tensor& block_row, const at::Tensor& row_slots,
                      const at::Tensor& block_col, bool need_x, bool need_values, bool need_bias, at::Tensor& grad_x,
                      at::Tensor& grad_values, at::Tensor& grad_bias) {
  const int64_t M = x.size(0), row_parts = sdd_row_parts(M), blocks_bytes = values.numel() * int64_t(sizeof(float));
  if (!(need_x && need_values && fused_backward(M, blocks_bytes))) {  // each gradient by itself
    if (need_x) dds_out(dy, values, col_ptr, col_slots, block_row, grad_x);
    if (need_values) sdd_out(dy, x, row_slots, block_row, block_col, grad_values);
    if (need_bias) grad_bias.copy_(dy.sum({0}, /*keepdim=*/false, at::kFloat));
    return;
  }
  check_backward_args(dy, x, values, col_ptr, col_slots, block_row, row_slots, block_col, grad_x, grad_values,
                      need_bias ? grad_bias : at::Tensor());
  const int64_t B = values.size(1), nnzb = values.size(0), N = dy.size(1), K = x.size(1), C = col_ptr.numel() - 1;
  const int b = block_index(B);
  const at::Tensor blocks = float_blocks(values, /*transpose=*/false);
  // Each row part sums its dvalues and bias into its own accumulators, added up at the end.
  SlotAccumulators acc(grad_values, row_parts);
  at::Tensor sums = at::zeros({need_bias ? row_parts : 0, N}, x.options().dtype(at::kFloat));
  with_dtype(x.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, row_parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t m_end = M * (q + 1) / row_parts;
        for (int64_t m0 = M * q / row_parts; m0 < m_end; m0 += kBackwardChunk) {
          const int64_t m1 = std::min(m_end, m0 + kBackwardChunk);
          k.view_rows[b](in_ptr<T>(dy), N, N, blocks.data_ptr<float>(), col_ptr.data_ptr<int32_t>(),
                         col_slots.data_ptr<int32_t>(), block_row.data_ptr<int32_t>(), nullptr, out_ptr<T>(grad_x), K,
                         K, m0, m1, 0, C);
          k.sdd_rows[b](in_ptr<T>(dy), N, N, in_ptr<T>(x), K, K, row_slots.data_ptr<int32_t>(),
                        block_row.data_ptr<int32_t>(), block_col.data_ptr<int32_t>(), acc.parts()[q], 0, nnzb, m0, m1);
          if (need_bias) k.column_sums(in_ptr<T>(dy), N, N, m0, m1, sums[q].data_ptr<float>());
        }
      }
    });
  });
  acc.add_to_out();
  if (need_bias) grad_bias.copy_(sums.sum(0));
}

}  // namespace cpu
}  // namespace rigl_sparse
