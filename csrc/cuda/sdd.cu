// rigl_sparse::sdd in CUDA: out[s] = dy[:, rows(s)].T @ x[:, cols(s)] for the active slots only, on tensor cores.
#include "matmul.cuh"
#include "common.cuh"

namespace rigl_sparse {
namespace cuda {

void sdd_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row, const at::Tensor& block_col,
             at::Tensor& out) {
  const at::Device device = dy.device();
  check_gradient_pair(dy, x, block_row, block_col);
  const int64_t b = check_values(out, device);
  check_same_dtype(dy, out, "dy", "out");
  TORCH_CHECK(block_row.numel() == out.size(0) && block_col.numel() == out.size(0),
              "block_row and block_col must have one entry per block of out (", out.size(0), ")");
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = current_stream();
  dispatch(dy.scalar_type(), b, [&]<typename T, int B>() {
    check_launch(sdd<T, B>(ptr<T>(dy), ptr<T>(x), block_row.data_ptr<int32_t>(), block_col.data_ptr<int32_t>(),
                           out.size(0), dy.size(0), dy.size(1), x.size(1), mut_ptr<T>(out), stream),
                 "sdd");
  });
}

}  // namespace cuda
}  // namespace rigl_sparse
