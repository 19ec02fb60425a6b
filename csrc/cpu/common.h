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

// How many work items one task must hold so that it does at least ~64K multiply-adds (tens of
// microseconds): waking a thread for less costs more than the work (a 4x slowdown on small layers).
inline int64_t grain_for(int64_t work_per_item) {
  constexpr int64_t kMinWork = int64_t{1} << 16;
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_item));
}

// A dense [M, n] operand as row panels of MR rows (pack_row_panels), for dsd and dds.
inline at::Tensor row_panels(const at::Tensor& t, int64_t n_blocks, int64_t B, int MR) {
  const int64_t M = t.size(0), n = t.size(1), panels = (M + MR - 1) / MR;
  at::Tensor out = at::empty({panels, n_blocks, MR, B}, t.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, panels, std::max<int64_t>(16, grain_for(MR * n)), [&](int64_t begin, int64_t end) {
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
  at::parallel_for(0, n_blocks, grain_for(M * B), [&](int64_t begin, int64_t end) {
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
  at::parallel_for(0, nnzb, std::max<int64_t>(64, grain_for(B * B)), [&](int64_t begin, int64_t end) {
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

// out[M, n_out] = a[M, n_a] @ (the layout's blocks, over one view): the body shared by dsd (row view,
// W.T blocks, bias) and dds (column view, W blocks).  names = {a, ptr, slots, coord} for messages.
inline void view_matmul_out(const at::Tensor& a, const at::Tensor& values, bool transpose, const at::Tensor& ptr,
                            const at::Tensor& slots, const at::Tensor& coord, const float* bias, at::Tensor& out,
                            const char* const names[4]) {
  check_float_or_bf16(a, names[0]);
  check_float_or_bf16(values, "values");
  check_float_or_bf16(out, "out");
  check_index(ptr, names[1]);
  check_index(slots, names[2]);
  check_index(coord, names[3]);
  TORCH_CHECK(values.dim() == 3 && values.size(1) == values.size(2), "values must be [nnzb, b, b]");
  TORCH_CHECK(a.scalar_type() == values.scalar_type() && out.scalar_type() == a.scalar_type(), names[0],
              ", values and out must share a dtype");
  const int64_t B = values.size(1), M = a.size(0), n_out_blocks = ptr.numel() - 1;
  const int64_t a_blocks = (a.size(1) + B - 1) / B, n_out = out.size(1);
  TORCH_CHECK(out.size(0) == M && (n_out + B - 1) / B == n_out_blocks, "out must be [M, ", n_out_blocks,
              " blocks of ", B, "] to match ", names[1]);
  const at::Tensor blocks = float_blocks(values, transpose);  // oriented as [s][k][n]
  dispatch(a.scalar_type(), B, [&]<typename T, int Bc>() {
    const at::Tensor panels = row_panels(a, a_blocks, Bc, rows_per_tile<Bc>());
    const int64_t per_block = M * Bc * Bc * std::max<int64_t>(1, values.size(0) / std::max<int64_t>(1, n_out_blocks));
    at::parallel_for(0, n_out_blocks, grain_for(per_block), [&](int64_t begin, int64_t end) {
      sparse_matmul<T, Bc>(panels.data_ptr<float>(), M, a_blocks, blocks.data_ptr<float>(), ptr.data_ptr<int32_t>(),
                           slots.data_ptr<int32_t>(), coord.data_ptr<int32_t>(), bias, out_ptr<T>(out), n_out, begin,
                           end);
    });
  });
}

}  // namespace cpu
}  // namespace rigl_sparse
