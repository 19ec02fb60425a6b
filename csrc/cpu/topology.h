// The layout's six topology tensors by name, as rigl_sparse/topology.py's Topology names them and in the
// same order (the ops take them as one tensor list; kTopologyFields is what a test compares with Python's).
#pragma once

#include <array>
#include <ATen/ATen.h>

namespace rigl_sparse {
namespace cpu {

inline constexpr std::array<const char*, 6> kTopologyFields = {"block_row", "block_col", "row_ptr",
                                                                "row_slots", "col_ptr",   "col_slots"};

// A view of an op's topology argument (which outlives the call): built once per call, after `fits`.
struct Topology {
  explicit Topology(at::TensorList t)
      : block_row(t[0]), block_col(t[1]), row_ptr(t[2]), row_slots(t[3]), col_ptr(t[4]), col_slots(t[5]) {}

  // Six 1-D int32 CPU tensors: nnzb entries in the coordinate and slot tensors, a row view over `rows` and a
  // column view over `cols` blocks (the op's checks; anything else goes to the op's Python kernel).
  static bool fits(at::TensorList t, int64_t nnzb, int64_t rows, int64_t cols) {
    if (t.size() != kTopologyFields.size()) return false;
    for (const at::Tensor& part : t)
      if (!part.defined() || !part.device().is_cpu() || part.scalar_type() != at::kInt || part.dim() != 1)
        return false;
    const Topology topology(t);
    return topology.block_row.size(0) == nnzb && topology.block_col.size(0) == nnzb &&
           topology.row_slots.size(0) == nnzb && topology.col_slots.size(0) == nnzb &&
           topology.row_ptr.size(0) == rows + 1 && topology.col_ptr.size(0) == cols + 1;
  }

  int64_t nnzb() const { return block_row.size(0); }

  const at::Tensor &block_row, &block_col, &row_ptr, &row_slots, &col_ptr, &col_slots;
};

}  // namespace cpu
}  // namespace rigl_sparse
