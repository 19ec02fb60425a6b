// Shared by the CPU op entry points: argument checks and dispatch over dtype and block size.
#pragma once

#include <torch/extension.h>

#include "isa.h"

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

// Every entry of the int32 tensor t lies in [0, bound).  The topology checks below cost O(nnzb) on the
// host, so a bad direct call of a binding is refused instead of reading out of bounds.
inline void check_range(const at::Tensor& t, int64_t bound, const char* name) {
  const int32_t* p = t.data_ptr<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i)
    TORCH_CHECK(0 <= p[i] && p[i] < bound, name, "[", i, "] = ", p[i], " lies outside [0, ", bound, ")");
}

// One view of the topology: ptr rises from 0 to nnzb, slots lists every slot once per entry (nnzb of
// them, each in [0, nnzb)), and coord gives each slot's other block coordinate, in [0, coord_blocks).
inline void check_view(const at::Tensor& ptr, const at::Tensor& slots, const at::Tensor& coord, int64_t nnzb,
                       int64_t coord_blocks, const char* ptr_name, const char* slots_name, const char* coord_name) {
  const int32_t* p = ptr.data_ptr<int32_t>();
  const int64_t n = ptr.numel();
  TORCH_CHECK(n >= 1 && p[0] == 0 && p[n - 1] == nnzb, ptr_name, " must run from 0 to nnzb = ", nnzb);
  for (int64_t i = 1; i < n; ++i) TORCH_CHECK(p[i - 1] <= p[i], ptr_name, " must not decrease (at entry ", i, ")");
  TORCH_CHECK(slots.numel() == nnzb && coord.numel() == nnzb, slots_name, " and ", coord_name,
              " must have one entry per block (", nnzb, ")");
  check_range(slots, nnzb, slots_name);
  check_range(coord, coord_blocks, coord_name);
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

// The kernels of the table in use for the tensor's element type: fn(kernels, float{} or bf16{}).
template <typename Fn>
decltype(auto) with_dtype(at::ScalarType dtype, Fn&& fn) {
  const KernelTable& table = kernels();
  if (dtype == at::kFloat) return fn(table.f32, float{});
  TORCH_CHECK(dtype == at::kBFloat16, "the cpu backend takes float32 or bfloat16, got ", dtype);
  return fn(table.b16, bf16{});
}

// The index of a block size in the kernels' per-block-size entries.
inline int block_index(int64_t block_size) {
  const int index = block_size_index(block_size);
  TORCH_CHECK(index >= 0, "the cpu backend takes block sizes 4, 8, 16, 32, 64, 128, got ", block_size);
  return index;
}

// Rows of one register tile of the kernels in use for block size B (dsd/dds pad M to a multiple).
inline int rows_per_tile(int64_t block_size) { return kernels().rows_per_tile[block_index(block_size)]; }

template <typename T>
const T* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}

// A dense [M, n] operand as fp32 block columns [n_blocks][rows_out][B] (pack_block_columns), zero
// past column n and past row M: dsd and dds take rows_out = M rounded up to the register tile, sdd M.
inline at::Tensor block_columns(const at::Tensor& t, int64_t n_blocks, int64_t B, int64_t rows_out) {
  const int64_t M = t.size(0), n = t.size(1);
  at::Tensor out = at::empty({n_blocks, rows_out, B}, t.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  with_dtype(t.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, n_blocks, std::max<int64_t>(1, grain_for(rows_out * B)), [&](int64_t begin, int64_t end) {
      k.pack_block_columns(in_ptr<T>(t), M, rows_out, n, n, static_cast<int>(B), begin, end, dst);
    });
  });
  return out;
}

// Blocks [nnzb, B, B] as fp32, transposed when asked (dsd multiplies by W.T), in parallel; fp32 blocks
// that need no transposing are used as they are.
inline at::Tensor float_blocks(const at::Tensor& values, bool transpose) {
  if (!transpose && values.scalar_type() == at::kFloat) return values;
  const int64_t nnzb = values.size(0), B = values.size(1);
  at::Tensor out = at::empty({nnzb, B, B}, values.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  with_dtype(values.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, nnzb, std::max<int64_t>(64, grain_for(B * B)), [&](int64_t begin, int64_t end) {
      k.float_blocks(in_ptr<T>(values), static_cast<int>(B), transpose, begin, end, dst);
    });
  });
  return out;
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
  check_view(ptr, slots, coord, values.size(0), a_blocks, names[1], names[2], names[3]);
  const at::Tensor blocks = float_blocks(values, transpose);  // oriented as [s][k][n]
  const int b = block_index(B), MR = rows_per_tile(B);
  const at::Tensor panels = block_columns(a, a_blocks, B, (M + MR - 1) / MR * MR);
  const int64_t per_block = M * B * B * std::max<int64_t>(1, values.size(0) / std::max<int64_t>(1, n_out_blocks));
  with_dtype(a.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, n_out_blocks, grain_for(per_block), [&](int64_t begin, int64_t end) {
      k.sparse_matmul[b](panels.data_ptr<float>(), M, blocks.data_ptr<float>(), ptr.data_ptr<int32_t>(),
                         slots.data_ptr<int32_t>(), coord.data_ptr<int32_t>(), bias, out_ptr<T>(out), n_out, begin,
                         end);
    });
  });
}

}  // namespace cpu
}  // namespace rigl_sparse
