// rigl_sparse::block_scores on the CPU: top-k inactive blocks by the norm of dy.T @ x, streamed.
//
// The dense gradient is formed one band of block rows at a time into a reusable buffer per thread
// (about kBandBytes each, a cache-sized tile of the layer's gradient), reduced to block scores and
// overwritten by the next band.  Extra memory: one band per thread plus O(blocks) for the scores and
// the top-k.
#include "common.h"
#include "top_k.h"

namespace rigl_sparse {
namespace cpu {

constexpr int64_t kBandBytes = 2 << 20;

void block_scores_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row,
                      const at::Tensor& block_col, int64_t block_size, at::Tensor& scores_out, at::Tensor& index_out) {
  check_float_or_bf16(dy, "dy");
  check_float_or_bf16(x, "x");
  check_index(block_row, "block_row");
  check_index(block_col, "block_col");
  TORCH_CHECK(scores_out.scalar_type() == at::kFloat && index_out.scalar_type() == at::kLong &&
                  scores_out.numel() == index_out.numel(),
              "scores_out must be float32 and index_out int64, of one length k");
  TORCH_CHECK(block_size > 0, "block_size must be positive");
  const int64_t B = block_size;
  const int64_t R = (dy.size(1) + B - 1) / B, C = (x.size(1) + B - 1) / B;
  // Plain row-major fp32 operands, zero-padded to whole blocks, for the band matmuls.
  at::Tensor dy_f = dy.to(at::kFloat), x_f = x.to(at::kFloat);
  if (R * B > dy.size(1)) dy_f = at::constant_pad_nd(dy_f, {0, R * B - dy.size(1)});
  if (C * B > x.size(1)) x_f = at::constant_pad_nd(x_f, {0, C * B - x.size(1)});
  x_f = x_f.contiguous();
  std::vector<uint8_t> active(R * C, 0);
  const int32_t* br = block_row.data_ptr<int32_t>();
  const int32_t* bc = block_col.data_ptr<int32_t>();
  for (int64_t s = 0; s < block_row.numel(); ++s) {
    TORCH_CHECK(0 <= br[s] && br[s] < R && 0 <= bc[s] && bc[s] < C, "block ", s, " at (", br[s], ", ", bc[s],
                ") lies outside the ", R, " x ", C, " grid of blocks");
    active[static_cast<int64_t>(br[s]) * C + bc[s]] = 1;
  }
  std::vector<float> scores(R * C);
  // Bands run in parallel, one whole band per thread (its matmul single-threaded inside the parallel
  // region): small matmuls keep their efficiency without a fork/join per band.
  const int64_t band =
      std::max<int64_t>(1, kBandBytes / (B * std::max<int64_t>(C, 1) * B * static_cast<int64_t>(sizeof(float))));
  const int64_t n_bands = (R + band - 1) / band;
  const KernelTable& table = kernels();
  at::parallel_for(0, n_bands, 1, [&](int64_t begin, int64_t end) {
    at::Tensor grad = at::empty({std::min(band, R) * B, C * B}, x_f.options());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r0 = i * band, rows = std::min(band, R - r0);
      at::Tensor g = grad.narrow(0, 0, rows * B);
      at::mm_out(g, dy_f.narrow(1, r0 * B, rows * B).t(), x_f);
      table.band_scores(g.data_ptr<float>(), rows, C, static_cast<int>(B), r0, active.data(), scores.data());
    }
  });
  top_k(scores.data(), R * C, scores_out.numel(), scores_out.data_ptr<float>(), index_out.data_ptr<int64_t>());
}

}  // namespace cpu
}  // namespace rigl_sparse
