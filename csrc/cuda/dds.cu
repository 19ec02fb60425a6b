// rigl_sparse::dds in CUDA: out = dy @ W over the column view, on tensor cores.
#include "matmul.cuh"
#include "common.cuh"

namespace rigl_sparse {
namespace cuda {

void dds_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr, const at::Tensor& col_slots,
             const at::Tensor& block_row, at::Tensor& out) {
  const int64_t b = check_block_matmul(dy, "dy", values, col_ptr, "col_ptr", col_slots, "col_slots", block_row,
                                       "block_row", out, "in_features");
  const int64_t M = dy.size(0), N = dy.size(1), K = out.size(1);
  const c10::cuda::CUDAGuard guard(dy.device());
  const cudaStream_t stream = current_stream();
  dispatch(dy.scalar_type(), b, [&]<typename T, int B>() {
    check_launch(dds<T, B>(ptr<T>(dy), ptr<T>(values), col_ptr.data_ptr<int32_t>(), col_slots.data_ptr<int32_t>(),
                           block_row.data_ptr<int32_t>(), static_cast<int>(values.size(0)), M, N, K, mut_ptr<T>(out),
                           stream),
                 "dds");
  });
}

}  // namespace cuda
}  // namespace rigl_sparse
