// rigl_sparse::dds in CUDA: out = dy @ W over the column view, on tensor cores.
#include "matmul.cuh"
#include "common.cuh"

namespace rigl_sparse {
namespace cuda {

void dds_out(const at::Tensor& dy, const at::Tensor& values, const at::Tensor& col_ptr, const at::Tensor& col_slots,
             const at::Tensor& block_row, at::Tensor& out) {
  const at::Device device = dy.device();
  check_matrix(dy, "dy", device);
  const int64_t b = check_values(values, device);
  check_same_dtype(dy, values, "dy", "values");
  check_index(col_ptr, "col_ptr", device);
  check_index(col_slots, "col_slots", device);
  check_index(block_row, "block_row", device);
  check_matrix(out, "out", device);
  check_same_dtype(dy, out, "dy", "out");
  const int64_t M = dy.size(0), N = dy.size(1), K = out.size(1);
  TORCH_CHECK(out.size(0) == M, "out must have ", M, " rows, got ", out.size(0));
  TORCH_CHECK(col_ptr.numel() == (K + b - 1) / b + 1, "col_ptr must have ceil(in_features / b) + 1 = ",
              (K + b - 1) / b + 1, " entries, got ", col_ptr.numel());
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = current_stream();
  dispatch(dy.scalar_type(), b, [&]<typename T, int B>() {
    check_launch(dds<T, B>(ptr<T>(dy), ptr<T>(values), col_ptr.data_ptr<int32_t>(), col_slots.data_ptr<int32_t>(),
                           block_row.data_ptr<int32_t>(), M, N, K, mut_ptr<T>(out), stream),
                 "dds");
  });
}

}  // namespace cuda
}  // namespace rigl_sparse
