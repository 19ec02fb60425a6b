// Shared by the CPU op entry points: argument checks and dispatch over dtype and block size.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <string>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "isa.h"

namespace rigl_sparse {
namespace cpu {

// at::empty, with the kernel asked for 2 MiB pages (madvise MADV_HUGEPAGE, where Linux's transparent huge
// pages are in "madvise" mode) under the whole 2 MiB spans of a buffer of kFreshBytes or more: the outputs
// and the large scratch of the ops.  glibc's malloc maps a block that large afresh on every call (32 MiB is
// its largest mmap threshold), and written a 4 KiB page fault at a time it cost ~15% of a 2048 x 2048 ->
// 8192 forward at density 0.1 (2 threads, Zen 3: 103-110 GFLOP/s; 150 with 2 MiB pages; 17780 page faults
// per call, 1014 with the hint).  A smaller block comes back from malloc's heap, already mapped, and the
// hint there cost time instead: on the same Zen 3 with 2 threads, the sparse projections of a 512-wide
// transformer's training step (2048 rows, outputs of 4-16 MiB) took 292-308 ms with huge pages off and
// 425-436 ms with the hint on those outputs (khugepaged collapsing the heap's pages meanwhile).
constexpr int64_t kFreshBytes = int64_t(32) << 20;

inline at::Tensor empty_huge(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(out.data_ptr());
  const uintptr_t begin = (start + kHuge - 1) & ~(kHuge - 1), end = (start + out.nbytes()) & ~(kHuge - 1);
  if (static_cast<int64_t>(out.nbytes()) >= kFreshBytes && end > begin)
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
  return out;
}

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

// The element types the kernels are built for (the tables' f32 and b16 entries), with the names torch gives
// them in Python: the one list the dispatcher kernels and the Python side (_C_cpu.dtypes()) read.
struct KernelDtype {
  at::ScalarType type;
  const char* name;
};
constexpr KernelDtype kDtypes[] = {{at::kFloat, "float32"}, {at::kBFloat16, "bfloat16"}};

inline bool kernel_dtype(at::ScalarType type) {
  for (const KernelDtype& d : kDtypes)
    if (d.type == type) return true;
  return false;
}

inline void check_float_or_bf16(const at::Tensor& t, const char* name) {
  check_cpu_contiguous(t, name);
  TORCH_CHECK(kernel_dtype(t.scalar_type()), name, " must be float32 or bfloat16 for the cpu backend, got ",
              t.scalar_type());
}

// How many work items one task must hold so that it does at least ~64K multiply-adds (tens of
// microseconds): waking a thread for less costs more than the work (a 4x slowdown on small layers).
constexpr int64_t kMinWork = int64_t{1} << 16;
inline int64_t grain_for(int64_t work_per_item) {
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
// past column n and past row M (the convolution's weight gradient takes dy so, with rows_out = M).
inline at::Tensor block_columns(const at::Tensor& t, int64_t n_blocks, int64_t B, int64_t rows_out) {
  const int64_t M = t.size(0), n = t.size(1);
  at::Tensor out = empty_huge({n_blocks, rows_out, B}, t.options().dtype(at::kFloat));
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
  at::Tensor out = empty_huge({nnzb, B, B}, values.options().dtype(at::kFloat));
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

// The parts of a view split among threads so that each holds about as many slots: part p covers view
// entries [bounds[p], bounds[p + 1]).  (Split evenly by entry, a part holding the denser block rows would
// set the pace of the call.)
inline std::vector<int64_t> balanced_parts(const int32_t* ptr, int64_t entries, int64_t parts) {
  std::vector<int64_t> bounds(parts + 1, entries);
  bounds[0] = 0;
  const int64_t nnzb = ptr[entries];
  for (int64_t p = 1; p < parts; ++p)
    bounds[p] = std::lower_bound(ptr, ptr + entries + 1, (nnzb * p + parts - 1) / parts) - ptr;
  for (int64_t p = 1; p <= parts; ++p) bounds[p] = std::max(bounds[p], bounds[p - 1]);
  return bounds;
}

// Whether a product over M rows is split among threads by rows (each thread: its rows, every block) rather
// than by blocks: when every thread gets at least two register tiles of rows per call.  With fewer rows,
// a row split would make every thread read every block for a few rows each.
inline bool split_by_rows(int64_t M, int64_t rows_per_tile) {
  return M >= 2 * rows_per_tile * at::get_num_threads();
}

// out[M, n_out] = a[M, n_a] @ (the layout's blocks, over one view): the body shared by dsd (row view,
// W.T blocks, bias) and dds (column view, W blocks).  names = {a, ptr, slots, coord} for messages.
// A forward of at most kernels().dot_rows rows takes W's blocks as stored (dot_rows: each block read once,
// none transposed, no register tile of padding rows); any other call runs view_rows, split by rows or by
// slot-balanced parts of the view.
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
  const int64_t B = values.size(1), M = a.size(0), n_view = ptr.numel() - 1, n_a = a.size(1);
  const int64_t a_blocks = (n_a + B - 1) / B, n_out = out.size(1), nnzb = values.size(0);
  TORCH_CHECK(out.size(0) == M && (n_out + B - 1) / B == n_view, "out must be [M, ", n_view, " blocks of ", B,
              "] to match ", names[1]);
  check_view(ptr, slots, coord, nnzb, a_blocks, names[1], names[2], names[3]);
  const int b = block_index(B), MR = rows_per_tile(B);
  if (M == 0) return;
  const int32_t* p = ptr.data_ptr<int32_t>();
  const bool dot = transpose && M <= kernels().dot_rows;
  const at::Tensor blocks = float_blocks(values, transpose && !dot);  // oriented [s][k][n], or as stored
  at::Tensor a_padded = a;  // dot_rows: a as fp32 [M][a_blocks * B], zero past n_a
  if (dot && (a.scalar_type() != at::kFloat || n_a != a_blocks * B))
    a_padded = at::constant_pad_nd(a.to(at::kFloat), {0, a_blocks * B - n_a}).contiguous();
  with_dtype(a.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    auto run = [&](int64_t m_begin, int64_t m_end, int64_t j_begin, int64_t j_end) {
      if (dot) {
        k.dot_rows[b](a_padded.data_ptr<float>(), a_blocks * B, M, blocks.data_ptr<float>(), p,
                      slots.data_ptr<int32_t>(), coord.data_ptr<int32_t>(), bias, out_ptr<T>(out), n_out, n_out,
                      j_begin, j_end);
      } else {
        k.view_rows[b](in_ptr<T>(a), n_a, n_a, blocks.data_ptr<float>(), p, slots.data_ptr<int32_t>(),
                       coord.data_ptr<int32_t>(), bias, out_ptr<T>(out), n_out, n_out, m_begin, m_end, j_begin,
                       j_end);
      }
    };
    if (!dot && split_by_rows(M, MR)) {
      const int64_t tiles = (M + MR - 1) / MR;
      at::parallel_for(0, tiles, grain_for(MR * nnzb * B * B), [&](int64_t begin, int64_t end) {
        run(begin * MR, std::min(M, end * MR), 0, n_view);
      });
      return;
    }
    const int64_t parts = M * nnzb * B * B >= 2 * kMinWork ? at::get_num_threads() : 1;
    const std::vector<int64_t> bounds = balanced_parts(p, n_view, parts);
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) run(0, M, bounds[q], bounds[q + 1]);
    });
  });
}

// acc_parts[q] (fp32 [nnzb, B, B] each, zeroed) += dy.T @ x on the active blocks for the rows of part q of
// `parts` equal row ranges, every slot (sdd_rows), one part per task; when `slot_split`, instead one
// accumulator and parts of the slots over all the rows.
inline void sdd_parts(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& row_slots,
                      const at::Tensor& block_row, const at::Tensor& block_col, int64_t B, float* const* acc_parts,
                      int64_t parts, bool slot_split) {
  const int64_t M = x.size(0), nnzb = block_row.numel();
  with_dtype(x.scalar_type(), [&](const auto& k, auto tag) {
    using T = decltype(tag);
    at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        const int64_t p0 = slot_split ? nnzb * q / parts : 0, p1 = slot_split ? nnzb * (q + 1) / parts : nnzb;
        const int64_t m0 = slot_split ? 0 : M * q / parts, m1 = slot_split ? M : M * (q + 1) / parts;
        k.sdd_rows[block_index(B)](in_ptr<T>(dy), dy.size(1), dy.size(1), in_ptr<T>(x), x.size(1), x.size(1),
                                   row_slots.data_ptr<int32_t>(), block_row.data_ptr<int32_t>(),
                                   block_col.data_ptr<int32_t>(), acc_parts[slot_split ? 0 : q], p0, p1, m0, m1);
      }
    });
  });
}

// `count` fp32 [nnzb, B, B] accumulators whose sum becomes `out` (zeroed here), one per part of a weight
// gradient split by rows: for fp32 `out` the first is out itself, the others (for bf16, all) zeroed scratch
// that add_to_out() adds to it at the end.
class SlotAccumulators {
 public:
  SlotAccumulators(at::Tensor& out, int64_t count) : out_(out) {
    const bool in_out = out.scalar_type() == at::kFloat;
    out.zero_();
    scratch_ = empty_huge({count - (in_out ? 1 : 0), out.size(0), out.size(1), out.size(2)},
                          out.options().dtype(at::kFloat)).zero_();
    if (in_out) parts_.push_back(out.data_ptr<float>());
    for (int64_t q = 0; q < scratch_.size(0); ++q) parts_.push_back(scratch_[q].data_ptr<float>());
  }
  float* const* parts() const { return parts_.data(); }
  void add_to_out() {
    if (scratch_.size(0) > 0) out_.add_(scratch_.sum(0).to(out_.scalar_type()));
  }

 private:
  at::Tensor& out_;
  at::Tensor scratch_;
  std::vector<float*> parts_;
};

// The weight gradient's rows are split among threads (each summing into its own accumulator, added up at
// the end) when each thread gets at least this many rows; with fewer, threads split the slots.
constexpr int64_t kSddRowsPerThread = 256;

inline int64_t sdd_row_parts(int64_t M) {
  return M >= kSddRowsPerThread * 2 ? std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                                M / kSddRowsPerThread))
                                    : 1;
}

// The backward takes dX, dW and the bias in one pass over chunks of rows (fused: each chunk of dy is read
// from memory once) when the weight gradient splits its rows over threads and the layer's blocks take
// fewer than kFusedBackwardBytes (fp32).  From that size on, each chunk reads all the blocks for dX and
// streams each thread's accumulator for dW, more than the caches hold at once, and dX and dW run each by
// itself.  Measured through SparseLinear (2048 rows, 2 threads, fp32, density 0.1, the two paths
// alternated in one process) on Zen 3 (AVX2): blocks of 0.1-3.6 MiB, either path within 5% (fused ahead at
// 1024 x 1024); 6.4 MiB at b = 32, separate 3-16% faster (4096 x 4096, 2048 -> 8192, 8192 -> 2048); at
// b = 16 and 64, even or separate ahead.
constexpr int64_t kFusedBackwardBytes = 4 << 20;

inline bool fused_backward(int64_t M, int64_t blocks_bytes) {
  return sdd_row_parts(M) > 1 && blocks_bytes < kFusedBackwardBytes;
}

// Which path the native kernels take for `op` ("dsd", "dds", "sdd" or "dsd_backward") on M rows of block
// size B with the threads and instruction set in use, in words (for info); blocks_bytes, the layer's blocks
// in fp32, chooses the backward's path.
inline std::string kernel_path(const std::string& op, int64_t M, int64_t B, int64_t blocks_bytes) {
  const int MR = rows_per_tile(B);
  const std::string threads = std::to_string(at::get_num_threads()) + " threads";
  const std::string tiles = "register tiles of " + std::to_string(MR) + " rows";
  if (op == "dsd" && M <= kernels().dot_rows)
    return "dot products along W's blocks as stored (no transpose), split by slot-balanced block rows over " + threads;
  if (op == "dsd" || op == "dds")
    return split_by_rows(M, MR) ? tiles + ", split by rows over " + threads
                                : tiles + ", split by slot-balanced block " + (op == "dsd" ? "rows" : "columns") +
                                      " over " + threads + " (fewer than " + std::to_string(2 * MR) +
                                      " rows a thread)";
  const int64_t parts = sdd_row_parts(M);
  if (op == "sdd")
    return parts > 1 ? "rows split over " + std::to_string(parts) + " threads, each summing into its own accumulator"
                     : "slots split over " + threads + " (fewer than " + std::to_string(2 * kSddRowsPerThread) +
                           " rows)";
  TORCH_CHECK(op == "dsd_backward", "op must be dsd, dds, sdd or dsd_backward, got ", op);
  if (fused_backward(M, blocks_bytes))
    return "dX, dW and the bias in one pass over chunks of rows, split over " + std::to_string(parts) + " threads";
  const std::string separate = "dds, sdd and a column sum, each by itself";
  return parts > 1 ? separate + " (the blocks take " + std::to_string(kFusedBackwardBytes >> 20) + " MiB or more)"
                   : separate;
}

}  // namespace cpu
}  // namespace rigl_sparse
