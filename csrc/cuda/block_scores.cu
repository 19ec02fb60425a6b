// rigl_sparse::block_scores in CUDA: top-k inactive blocks by the Frobenius norm of dy.T @ x, streamed (never the dense gradient).
#include "block_scores.cuh"
#include "common.cuh"

namespace rigl_sparse {
namespace cuda {

void block_scores_out(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row,
                      const at::Tensor& block_col, int64_t block_size, at::Tensor& scores_out, at::Tensor& index_out) {
  const at::Device device = dy.device();
  check_gradient_pair(dy, x, block_row, block_col);
  check_cuda(scores_out, "scores_out", device);
  check_cuda(index_out, "index_out", device);
  TORCH_CHECK(scores_out.scalar_type() == at::kFloat && index_out.scalar_type() == at::kLong &&
                  scores_out.dim() == 1 && scores_out.numel() == index_out.numel(),
              "scores_out must be float32 and index_out int64, both 1-D of one length k");
  const int64_t b = block_size, N = dy.size(1), K = x.size(1), k = scores_out.numel();
  TORCH_CHECK(b == 32 || b == 64 || b == 128, "the cuda kernels take block sizes 32, 64, 128, got ", b);
  const int64_t R = (N + b - 1) / b, C = (K + b - 1) / b;
  TORCH_CHECK(R * C < INT32_MAX, "block_scores: ", R, " x ", C, " blocks exceed 32-bit block indices");
  TORCH_CHECK((N + kScoreTile - 1) / kScoreTile <= kMaxGridY, "block_scores: dy's ", N, " columns exceed the CUDA ",
              "grid limit of ", kMaxGridY, " bands of ", kScoreTile);
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = current_stream();
  int num_sms = 0;
  check_launch(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device.index()), "block_scores");
  at::Tensor active = at::zeros({R * C}, dy.options().dtype(at::kByte));
  if (block_row.numel() > 0) active.index_fill_(0, block_row.to(at::kLong) * C + block_col.to(at::kLong), 1);
  dispatch(dy.scalar_type(), b, [&]<typename T, int B>() {
    const size_t bytes = block_scores_workspace_bytes<B>(N, K, k, num_sms);
    at::Tensor workspace = at::empty({static_cast<int64_t>(bytes)}, dy.options().dtype(at::kByte));
    check_launch(block_scores<T, B>(ptr<T>(dy), ptr<T>(x), active.data_ptr<uint8_t>(), dy.size(0), N, K, k,
                                    workspace.data_ptr(), bytes, num_sms, scores_out.data_ptr<float>(),
                                    index_out.data_ptr<int64_t>(), stream),
                 "block_scores");
  });
}


}  // namespace cuda
}  // namespace rigl_sparse
