// rigl_sparse::dsd in CUDA: out = x @ W.T (+ bias) over the row view, on tensor cores.
#include "matmul.cuh"
#include "common.cuh"

namespace rigl_sparse {
namespace cuda {

void dsd_out(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
             const at::Tensor& row_ptr, const at::Tensor& row_slots, const at::Tensor& block_col, at::Tensor& out) {
  const at::Device device = x.device();
  const int64_t b = check_block_matmul(x, "x", values, row_ptr, "row_ptr", row_slots, "row_slots", block_col,
                                       "block_col", out, "out_features");
  const int64_t M = x.size(0), K = x.size(1), N = out.size(1);
  if (bias.has_value()) {
    check_half(*bias, "bias", device);
    check_same_dtype(x, *bias, "x", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == N, "bias must have shape [", N, "], got ", bias->sizes());
  }
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = current_stream();
  dispatch(x.scalar_type(), b, [&]<typename T, int B>() {
    const T* bias_ptr = bias.has_value() ? ptr<T>(*bias) : nullptr;
    check_launch(dsd<T, B>(ptr<T>(x), ptr<T>(values), bias_ptr, row_ptr.data_ptr<int32_t>(),
                           row_slots.data_ptr<int32_t>(), block_col.data_ptr<int32_t>(),
                           static_cast<int>(values.size(0)), M, K, N, mut_ptr<T>(out), stream),
                 "dsd");
  });
}

}  // namespace cuda
}  // namespace rigl_sparse
