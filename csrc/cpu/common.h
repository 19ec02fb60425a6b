// Shared by the CPU op entry points: argument checks and dispatch over dtype and block size.
#pragma once

#include <torch/extension.h>

#include "kernels.h"

namespace rigl_sparse {
namespace cpu {

inline void check_cpu_contiguous(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_index(const at::Tensor& t, const char* name) {
  check_cpu_contiguous(t, name);
  TORCH_CHECK(t.scalar_type() == at::kInt && t.dim() == 1, name, " must be a 1-D int32 tensor, got ", t.scalar_type(),
              " of dim ", t.dim());
}

inline void check_float_or_bf16(const at::Tensor& t, const char* name) {
  check_cpu_contiguous(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
              " must be float32 or bfloat16 for the cpu backend, got ", t.scalar_type());
}

// A dense [M, n] operand as row panels of MR rows (pack_row_panels), for dsd and dds.
inline at::Tensor row_panels(const at::Tensor& t, int64_t n_blocks, int64_t B, int MR) {
  const int64_t M = t.size(0), n = t.size(1), panels = (M + MR - 1) / MR;
  at::Tensor out = at::empty({panels, n_blocks, MR, B}, t.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, panels, 16, [&](int64_t begin, int64_t end) {
    if (t.scalar_type() == at::kFloat)
      pack_row_panels(t.data_ptr<float>(), M, n, n, static_cast<int>(B), MR, n_blocks, begin, end, dst);
    else
      pack_row_panels(reinterpret_cast<const bf16*>(t.data_ptr()), M, n, n, static_cast<int>(B), MR, n_blocks, begin,
                      end, dst);
  });
  return out;
}

// A dense [M, n] operand packed block-column-major as fp32: [n_blocks][M][B], zero past column n (sdd).
inline at::Tensor packed_float(const at::Tensor& t, int64_t n_blocks, int64_t B) {
  const int64_t M = t.size(0), n = t.size(1);
  at::Tensor out = at::empty({n_blocks, M, B}, t.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t begin, int64_t end) {
    if (t.scalar_type() == at::kFloat)
      pack_block_columns(t.data_ptr<float>(), M, n, n, static_cast<int>(B), begin, end, dst);
    else
      pack_block_columns(reinterpret_cast<const bf16*>(t.data_ptr()), M, n, n, static_cast<int>(B), begin, end, dst);
  });
  return out;
}

// Blocks [nnzb, B, B] as fp32, transposed when asked (dsd multiplies by W.T), in parallel.
inline at::Tensor float_blocks(const at::Tensor& values, bool transpose) {
  const int64_t nnzb = values.size(0), B = values.size(1);
  at::Tensor out = at::empty({nnzb, B, B}, values.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  const bool is_float = values.scalar_type() == at::kFloat;
  at::parallel_for(0, nnzb, 64, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s)
      for (int64_t i = 0; i < B; ++i)
        for (int64_t j = 0; j < B; ++j) {
          const int64_t src = s * B * B + (transpose ? j * B + i : i * B + j);
          dst[s * B * B + i * B + j] =
              is_float ? values.data_ptr<float>()[src] : to_float(reinterpret_cast<const bf16*>(values.data_ptr())[src]);
        }
  });
  return out;
}

// Calls fn.template operator()<T, B>() for the tensor's dtype and the block size.
template <typename Fn>
void dispatch(at::ScalarType dtype, int64_t block_size, Fn&& fn) {
  auto with_block = [&](auto tag) {
    using T = decltype(tag);
    switch (block_size) {
      case 4: fn.template operator()<T, 4>(); break;
      case 8: fn.template operator()<T, 8>(); break;
      case 16: fn.template operator()<T, 16>(); break;
      case 32: fn.template operator()<T, 32>(); break;
      case 64: fn.template operator()<T, 64>(); break;
      case 128: fn.template operator()<T, 128>(); break;
      default: TORCH_CHECK(false, "the cpu backend takes block sizes 4, 8, 16, 32, 64, 128, got ", block_size);
    }
  };
  if (dtype == at::kFloat) {
    with_block(float{});
  } else {
    TORCH_CHECK(dtype == at::kBFloat16, "the cpu backend takes float32 or bfloat16, got ", dtype);
    with_block(bf16{});
  }
}

template <typename T>
T* out_ptr(at::Tensor& out) {
  return reinterpret_cast<T*>(out.data_ptr());
}

}  // namespace cpu
}  // namespace rigl_sparse
