// Shared by the CUDA op entry points: argument checks, dtype and block-size dispatch, launch checks.
#pragma once

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "gemm.cuh"

namespace rigl_sparse {
namespace cuda {

inline void check_cuda(const at::Tensor& t, const char* name, const at::Device& device) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got one on ", t.device());
  TORCH_CHECK(t.device() == device, name, " is on ", t.device(), " but the other arguments are on ", device);
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_half(const at::Tensor& t, const char* name, const at::Device& device) {
  check_cuda(t, name, device);
  TORCH_CHECK(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, name,
              " must be float16 or bfloat16 for the cuda backend, got ", t.scalar_type());
}

inline void check_index(const at::Tensor& t, const char* name, const at::Device& device) {
  check_cuda(t, name, device);
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1, name, " must be a 1-D int32 tensor, got ", t.scalar_type(),
              " of dim ", t.dim());
}

inline void check_matrix(const at::Tensor& t, const char* name, const at::Device& device) {
  check_half(t, name, device);
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D, got dim ", t.dim());
  TORCH_CHECK(t.size(0) <= INT32_MAX && t.size(1) <= INT32_MAX, name, " is too large for 32-bit indexing");
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), a_name, " (", a.scalar_type(), ") and ", b_name, " (",
              b.scalar_type(), ") must have the same dtype");
}

inline int64_t check_values(const at::Tensor& values, const at::Device& device) {
  check_half(values, "values", device);
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, b, b], got ",
              values.sizes());
  const int64_t b = values.size(1);
  TORCH_CHECK(b == 32 || b == 64 || b == 128, "the cuda kernels take block sizes 32, 64, 128, got ", b);
  return b;
}

// The operands of dsd / dds: a dense [M, n_in] input, the blocks, one view of the topology (ptr over
// the output's block columns, slots, and the other coordinate of each slot), and out [M, n_out].
// Returns the block size.  Sizes are checked here; the entries of ptr, slots and coord are checked by
// the kernels as they read them (a device-side assertion), so no call waits for the device.
inline int64_t check_block_matmul(const at::Tensor& in, const char* in_name, const at::Tensor& values,
                                  const at::Tensor& view_ptr, const char* ptr_name, const at::Tensor& view_slots,
                                  const char* slots_name, const at::Tensor& coord, const char* coord_name,
                                  const at::Tensor& out, const char* n_out_name) {
  const at::Device device = in.device();
  check_matrix(in, in_name, device);
  const int64_t b = check_values(values, device);
  check_same_dtype(in, values, in_name, "values");
  check_index(view_ptr, ptr_name, device);
  check_index(view_slots, slots_name, device);
  check_index(coord, coord_name, device);
  check_matrix(out, "out", device);
  check_same_dtype(in, out, in_name, "out");
  TORCH_CHECK(out.size(0) == in.size(0), "out must have ", in.size(0), " rows, got ", out.size(0));
  const int64_t blocks_out = (out.size(1) + b - 1) / b;
  TORCH_CHECK(view_ptr.numel() == blocks_out + 1, ptr_name, " must have ceil(", n_out_name, " / b) + 1 = ",
              blocks_out + 1, " entries, got ", view_ptr.numel());
  const int64_t nnzb = values.size(0);
  TORCH_CHECK(nnzb < INT32_MAX, "values has ", nnzb, " blocks; the cuda kernels index at most 2^31 - 1");
  TORCH_CHECK(view_slots.numel() == nnzb, slots_name, " must have one entry per block of values (", nnzb, "), got ",
              view_slots.numel());
  TORCH_CHECK(coord.numel() == nnzb, coord_name, " must have one entry per block of values (", nnzb, "), got ",
              coord.numel());
  TORCH_CHECK(blocks_out <= kMaxGridY, "ceil(", n_out_name, " / b) = ", blocks_out,
              " block columns exceed the CUDA grid limit of ", kMaxGridY, " for the cuda kernels");
  return b;
}

// The (dy [M, N], x [M, K]) pair a weight gradient is formed from (sdd, block_scores) and its
// block coordinates.
inline void check_gradient_pair(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& block_row,
                                const at::Tensor& block_col) {
  const at::Device device = dy.device();
  check_matrix(dy, "dy", device);
  check_matrix(x, "x", device);
  check_same_dtype(dy, x, "dy", "x");
  check_index(block_row, "block_row", device);
  check_index(block_col, "block_col", device);
  TORCH_CHECK(dy.size(0) == x.size(0), "dy and x must have the same number of rows, got ", dy.size(0), " and ",
              x.size(0));
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, "rigl_sparse cuda ", op, " failed: ", cudaGetErrorString(err));
}

// Calls fn.template operator()<T, B>() for the dtype (float16/bfloat16) and block size (32/64/128).
template <typename Fn>
void dispatch(at::ScalarType dtype, int64_t b, Fn&& fn) {
  auto with_block = [&](auto tag) {
    using T = decltype(tag);
    switch (b) {
      case 32:
        fn.template operator()<T, 32>();
        break;
      case 64:
        fn.template operator()<T, 64>();
        break;
      case 128:
        fn.template operator()<T, 128>();
        break;
      default:
        TORCH_CHECK(false, "the cuda kernels take block sizes 32, 64, 128, got ", b);
    }
  };
  if (dtype == at::kHalf)
    with_block(__half{});
  else
    with_block(__nv_bfloat16{});
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* mut_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace cuda
}  // namespace rigl_sparse
