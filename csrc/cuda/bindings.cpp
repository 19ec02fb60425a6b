// Python bindings of the CUDA kernels (module rigl_sparse._C_cuda).  Each function writes into the
// outputs it is given; rigl_sparse/ops/<op>/cuda.py allocates them and registers the cuda backend.
#include <torch/extension.h>

namespace rigl_sparse {
namespace cuda {
void dsd_out(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
             const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col, at::Tensor& out);
void dds_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr, const at::Tensor& col_slots,
             const at::Tensor& block_row, at::Tensor& out);
void sdd_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row, const at::Tensor& block_col,
             at::Tensor& out);
void block_scores_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row,
                      const at::Tensor& block_col, int64_t block_size, at::Tensor& scores_out, at::Tensor& index_out);
}  // namespace cuda
}  // namespace rigl_sparse

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rigl_sparse CUDA kernels (tensor-core block-sparse dsd, dds, sdd and streaming block_scores)";
  m.def("dsd_out", &rigl_sparse::cuda::dsd_out, "out = x @ W.T (+ bias) over the row view");
  m.def("dds_out", &rigl_sparse::cuda::dds_out, "out = dy @ W over the column view");
  m.def("sdd_out", &rigl_sparse::cuda::sdd_out, "out[s] = dy[:, rows(s)].T @ x[:, cols(s)]");
  m.def("block_scores_out", &rigl_sparse::cuda::block_scores_out, "top-k inactive blocks by gradient norm");
}
