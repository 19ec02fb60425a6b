// Block-sparse 2-D convolution on the CPU by implicit GEMM (the kernels: conv_kernels.h): forward, input gradient
// and weight gradient straight from the zero-padded NHWC input, without forming its patches.
// `geometry` is {OH, OW, KH, KW, SH, SW, DH, DW, groups, out/groups}; the weight matrix is
// [out, KH*KW*C/groups] (tap-major), and b divides out/groups.
#include "common.h"

namespace rigl_sparse {
namespace cpu {
namespace {

ConvShape conv_shape(const at::Tensor& x_padded, const std::vector<int64_t>& geometry) {
  check_float_or_bf16(x_padded, "x_padded");
  TORCH_CHECK(x_padded.dim() == 4, "x_padded must be [N, H, W, C] (padded, channels last), got dim ",
              x_padded.dim());
  TORCH_CHECK(geometry.size() == 10, "geometry must be {OH, OW, KH, KW, SH, SW, DH, DW, groups, out/groups}");
  const ConvShape g{x_padded.size(0), x_padded.size(1), x_padded.size(2), x_padded.size(3), geometry[0],
                    geometry[1], geometry[2], geometry[3], geometry[4], geometry[5], geometry[6], geometry[7],
                    geometry[8], geometry[9]};
  for (int64_t v : geometry) TORCH_CHECK(v > 0, "geometry entries must be positive");
  TORCH_CHECK(g.C % g.G == 0, "the channels (", g.C, ") must be divisible by groups (", g.G, ")");
  TORCH_CHECK((g.OH - 1) * g.SH + (g.KH - 1) * g.DH < g.Hp && (g.OW - 1) * g.SW + (g.KW - 1) * g.DW < g.Wp,
              "the output size does not fit the padded input");
  return g;
}

int64_t patch_rows(const ConvShape& g) { return g.N * g.OH * g.OW; }
int64_t patch_cols(const ConvShape& g) { return g.KH * g.KW * (g.C / g.G); }

}  // namespace

void conv_forward_out(const at::Tensor& x_padded, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col,
                      const std::vector<int64_t>& geometry, at::Tensor& out) {
  const ConvShape g = conv_shape(x_padded, geometry);
  check_float_or_bf16(values, "values");
  check_float_or_bf16(out, "out");
  check_index(row_ptr, "row_ptr");
  check_index(row_slots, "row_slots");
  check_index(block_col, "block_col");
  TORCH_CHECK(values.scalar_type() == x_padded.scalar_type() && out.scalar_type() == x_padded.scalar_type(),
              "x_padded, values and out must share a dtype");
  const int64_t B = values.size(1);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == patch_rows(g) && (out.size(1) + B - 1) / B == row_ptr.numel() - 1,
              "out must be [N*OH*OW, out_channels] matching row_ptr");
  check_view(row_ptr, row_slots, block_col, values.size(0), (patch_cols(g) + B - 1) / B, "row_ptr", "row_slots",
             "block_col");
  at::Tensor bias_f;
  if (bias.has_value()) {
    check_float_or_bf16(*bias, "bias");
    TORCH_CHECK(bias->numel() == out.size(1), "bias must have out_channels = ", out.size(1), " entries");
    bias_f = bias->to(at::kFloat).contiguous();
  }
  const at::Tensor blocks = float_blocks(values, /*transpose=*/true);
  const int b = block_index(B), MR = rows_per_tile(B);
  const int64_t panels = (patch_rows(g) + MR - 1) / MR, panel_work = MR * values.size(0) * B * B;
  with_dtype(x_padded.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, panels, grain_for(panel_work), [&](int64_t begin, int64_t end) {
      k.conv_forward[b](in_ptr<T>(x_padded), g, blocks.data_ptr<float>(), row_ptr.data_ptr<int32_t>(),
                        row_slots.data_ptr<int32_t>(), block_col.data_ptr<int32_t>(),
                        bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, out_ptr<T>(out), out.size(1), begin,
                        end);
    });
  });
}

void conv_input_grad_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr,
                         const at::Tensor& col_slots, const at::Tensor& block_row,
                         const std::vector<int64_t>& geometry, at::Tensor& dx_padded) {
  TORCH_CHECK(dx_padded.scalar_type() == at::kFloat, "dx_padded must be a float32 accumulator");
  const ConvShape g = conv_shape(dx_padded, geometry);
  check_float_or_bf16(dy, "dy");
  check_float_or_bf16(values, "values");
  check_index(col_ptr, "col_ptr");
  check_index(col_slots, "col_slots");
  check_index(block_row, "block_row");
  TORCH_CHECK(dy.scalar_type() == values.scalar_type(), "dy and values must share a dtype");
  const int64_t B = values.size(1);
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == patch_rows(g), "dy must be [N*OH*OW, out_channels]");
  TORCH_CHECK(col_ptr.numel() == (patch_cols(g) + B - 1) / B + 1, "col_ptr must have ceil(KH*KW*C / b) + 1 entries");
  check_view(col_ptr, col_slots, block_row, values.size(0), (dy.size(1) + B - 1) / B, "col_ptr", "col_slots",
             "block_row");
  const at::Tensor blocks = float_blocks(values, /*transpose=*/false);
  const int b = block_index(B);
  const int64_t image_work = patch_rows(g) / std::max<int64_t>(1, g.N) * values.size(0) * B * B;
  with_dtype(values.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, g.N, grain_for(image_work), [&](int64_t begin, int64_t end) {
      k.conv_input_grad[b](in_ptr<T>(dy), dy.size(1), g, blocks.data_ptr<float>(), col_ptr.data_ptr<int32_t>(),
                           col_slots.data_ptr<int32_t>(), block_row.data_ptr<int32_t>(), dx_padded.data_ptr<float>(),
                           begin, end);
    });
  });
}

void conv_weight_grad_out(const at::Tensor& dy, const at::Tensor& x_padded, const at::Tensor& row_slots,
                          const at::Tensor& block_row, const at::Tensor& block_col,
                          const std::vector<int64_t>& geometry, at::Tensor& out) {
  const ConvShape g = conv_shape(x_padded, geometry);
  check_float_or_bf16(dy, "dy");
  check_float_or_bf16(out, "out");
  check_index(row_slots, "row_slots");
  check_index(block_row, "block_row");
  check_index(block_col, "block_col");
  TORCH_CHECK(dy.scalar_type() == x_padded.scalar_type() && out.scalar_type() == x_padded.scalar_type(),
              "dy, x_padded and out must share a dtype");
  TORCH_CHECK(out.dim() == 3 && out.size(0) == block_row.numel() && out.size(1) == out.size(2),
              "out must be [nnzb, b, b]");
  TORCH_CHECK(dy.dim() == 2 && dy.size(0) == patch_rows(g), "dy must be [N*OH*OW, out_channels]");
  const int64_t B = out.size(1);
  TORCH_CHECK(row_slots.numel() == block_row.numel() && block_col.numel() == block_row.numel(),
              "row_slots, block_row and block_col must have one entry per block (", block_row.numel(), ")");
  check_range(row_slots, block_row.numel(), "row_slots");
  check_range(block_row, (dy.size(1) + B - 1) / B, "block_row");
  check_range(block_col, (patch_cols(g) + B - 1) / B, "block_col");
  const at::Tensor dy_cols = block_columns(dy, (dy.size(1) + B - 1) / B, B, dy.size(0));
  const int b = block_index(B);
  with_dtype(x_padded.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, row_slots.numel(), grain_for(patch_rows(g) * B * B), [&](int64_t begin, int64_t end) {
      k.conv_weight_grad[b](dy_cols.data_ptr<float>(), in_ptr<T>(x_padded), g, row_slots.data_ptr<int32_t>(),
                            block_row.data_ptr<int32_t>(), block_col.data_ptr<int32_t>(), out_ptr<T>(out), begin,
                            end);
    });
  });
}

}  // namespace cpu
}  // namespace rigl_sparse
