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

// A dense [M, n] operand as fp32, zero-padded to n_blocks * B columns.
inline at::Tensor padded_float(const at::Tensor& t, int64_t n_blocks, int64_t B) {
  at::Tensor f = t.scalar_type() == at::kFloat ? t : t.to(at::kFloat);
  const int64_t pad = n_blocks * B - t.size(1);
  if (pad > 0) f = at::constant_pad_nd(f, {0, pad});
  return f.contiguous();
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
