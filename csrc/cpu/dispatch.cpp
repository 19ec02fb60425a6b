// The cpu backend's kernels registered with torch's dispatcher for CPU tensors (rigl_sparse::dsd, dds, sdd,
// dsd_backward, conv2d, conv2d_backward), so that a call reaches them without a Python kernel.
//
// The operators and their Python kernels are defined by rigl_sparse/ops; the Python kernel of each checks
// the arguments, asks the backend registry which backend runs them and calls it.  A CPU kernel here takes
// only what that Python kernel would hand to the cpu backend without a word: no backend forced by
// use_backend (anywhere in the process), float32 or bfloat16, a block size the kernels have, and arguments
// that pass the op's checks.  Everything else it hands, unchanged, to the op's Python kernel, which says
// what is wrong, warns and picks the next backend, or runs the forced one.  So a bad argument gets the same
// message, and a forced backend runs, whichever kernel the dispatcher reached first.
#include <atomic>
#include <memory>

#include "common.h"
#include "entry_points.h"
#include "kernel_table.h"
#include "topology.h"

namespace py = pybind11;

namespace rigl_sparse {
namespace cpu {
namespace {

std::atomic<int> forcing{0};  // use_backend blocks open in this process (any thread)
std::atomic<int64_t> taken{0}, handed{0};  // calls run here / handed to the Python kernels

// The ops' Python kernels, by op; set once by register_kernels and never freed (they outlive any call).
struct PythonKernels {
  py::object dsd, dds, sdd, dsd_backward, conv2d, conv2d_backward;
};
PythonKernels* python_kernels = nullptr;

bool takes(const at::Tensor& t) {
  return t.device().is_cpu() && kernel_dtype(t.scalar_type());
}

bool has_block_size(int64_t b) {
  return block_size_index(b) >= 0;  // the kernels' own list (kernel_table.h), as the Python side reads it
}

int64_t blocks(int64_t size, int64_t b) {
  return (size + b - 1) / b;
}

// values [nnzb, b, b] of a's dtype with a block size the kernels have; a [M, K] on the grid's columns.
bool matmul_fits(const at::Tensor& a, const at::Tensor& values, at::TensorList topology, int64_t out_features,
                 int64_t in_features) {
  if (!takes(a) || a.dim() != 2 || !values.device().is_cpu() || values.scalar_type() != a.scalar_type() ||
      values.dim() != 3)
    return false;
  const int64_t b = values.size(1);
  return values.size(2) == b && has_block_size(b) &&
         Topology::fits(topology, values.size(0), blocks(out_features, b), blocks(in_features, b));
}

bool fast() {
  return forcing.load(std::memory_order_relaxed) == 0;
}

// Counts a call run here (the fast path's last check passed) or handed on (see call_counts).
bool take(bool fits) {
  (fits ? taken : handed).fetch_add(1, std::memory_order_relaxed);
  return fits;
}

template <typename Result, typename... Args>
Result in_python(const py::object& kernel, Args&&... args) {
  py::gil_scoped_acquire gil;
  return kernel(std::forward<Args>(args)...).template cast<Result>();
}

std::vector<at::Tensor> as_vector(at::TensorList t) {
  return t.vec();
}

py::object optional_to_python(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? py::cast(*t) : py::none();
}

at::Tensor dsd_cpu(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                   at::TensorList topology, c10::SymInt out_features_) {
  const int64_t out_features = out_features_.expect_int();
  const bool bias_fits = !bias.has_value() || (bias->device().is_cpu() && bias->scalar_type() == x.scalar_type() &&
                                                bias->dim() == 1 && bias->size(0) == out_features);
  if (!take(fast() && bias_fits && matmul_fits(x, values, topology, out_features, x.dim() == 2 ? x.size(1) : -1))) {
    py::gil_scoped_acquire gil;
    return python_kernels->dsd(x, values, optional_to_python(bias), as_vector(topology), out_features)
        .cast<at::Tensor>();
  }
  at::Tensor out = empty_huge({x.size(0), out_features}, x.options());
  c10::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  const Topology t(topology);
  dsd_out(x.contiguous(), values.contiguous(), b, t.row_ptr, t.row_slots, t.block_col, out);
  return out;
}

at::Tensor dds_cpu(const at::Tensor& dy, const at::Tensor& values, at::TensorList topology, c10::SymInt in_features_) {
  const int64_t in_features = in_features_.expect_int();
  if (!take(fast() && matmul_fits(dy, values, topology, dy.dim() == 2 ? dy.size(1) : -1, in_features)))
    return in_python<at::Tensor>(python_kernels->dds, dy, values, as_vector(topology), in_features);
  at::Tensor out = empty_huge({dy.size(0), in_features}, dy.options());
  const Topology t(topology);
  dds_out(dy.contiguous(), values.contiguous(), t.col_ptr, t.col_slots, t.block_row, out);
  return out;
}

bool pair_fits(const at::Tensor& dy, const at::Tensor& x) {
  return takes(x) && x.dim() == 2 && dy.device().is_cpu() && dy.scalar_type() == x.scalar_type() && dy.dim() == 2 &&
         dy.size(0) == x.size(0);
}

at::Tensor sdd_out_new(const at::Tensor& dy, const at::Tensor& x, at::TensorList topology, int64_t b) {
  const Topology t(topology);
  at::Tensor out = empty_huge({t.nnzb(), b, b}, x.options());
  sdd_out(dy.contiguous(), x.contiguous(), t.row_slots, t.block_row, t.block_col, out);
  return out;
}

at::Tensor sdd_cpu(const at::Tensor& dy, const at::Tensor& x, at::TensorList topology, c10::SymInt block_size_) {
  const int64_t b = block_size_.expect_int();
  if (!take(fast() && pair_fits(dy, x) && has_block_size(b) &&
            Topology::fits(topology, topology.empty() ? -1 : topology[0].size(0), blocks(dy.size(1), b),
                           blocks(x.size(1), b))))
    return in_python<at::Tensor>(python_kernels->sdd, dy, x, as_vector(topology), b);
  return sdd_out_new(dy, x, topology, b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dsd_backward_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                                 const at::Tensor& values, at::TensorList topology,
                                                                 bool need_x, bool need_values, bool need_bias) {
  if (!take(fast() && pair_fits(grad_y, x) && matmul_fits(x, values, topology, grad_y.size(1), x.size(1)))) {
    py::gil_scoped_acquire gil;
    return python_kernels->dsd_backward(grad_y, x, values, as_vector(topology), need_x, need_values, need_bias)
        .cast<std::tuple<at::Tensor, at::Tensor, at::Tensor>>();
  }
  const at::Tensor dy = grad_y.contiguous();
  at::Tensor grad_x = need_x ? empty_huge({x.size(0), x.size(1)}, x.options()) : at::empty({0}, x.options());
  at::Tensor grad_values = need_values ? empty_huge(values.sizes(), values.options()) : at::empty({0}, x.options());
  at::Tensor grad_bias = need_bias ? at::empty({dy.size(1)}, x.options()) : at::empty({0}, x.options());
  const Topology t(topology);
  dsd_backward_out(dy, x.contiguous(), values.contiguous(), t.col_ptr, t.col_slots, t.block_row, t.row_slots,
                   t.block_col, need_x, need_values, need_bias, grad_x, grad_values, grad_bias);
  return {grad_x, grad_values, grad_bias};
}

// ---- convolution (rigl_sparse/ops/conv2d/compute.py: the native implicit-GEMM path)
// geometry: kernel (2), stride (2), dilation (2), padding (top, bottom, left, right), groups.
struct Conv {
  int64_t kh, kw, sh, sw, dh, dw, top, bottom, left, right, groups, out_h, out_w;
};

// The convolution's shape when the native path takes it: x [N, C, H, W] and values of one dtype the
// kernels have, a block size they have, a geometry of positive sizes with an output of at least one pixel,
// a topology on the [out, kh * kw * C / groups] weight.
bool conv_fits(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
               at::TensorList topology, int64_t out_channels, c10::SymIntArrayRef geometry_, Conv& g) {
  if (geometry_.size() != 11 || !takes(x) || x.dim() != 4 || !values.device().is_cpu() ||
      values.scalar_type() != x.scalar_type() || values.dim() != 3)
    return false;
  int64_t v[11];
  for (int i = 0; i < 11; ++i) v[i] = geometry_[i].expect_int();
  g = Conv{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], 0, 0};
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.groups < 1 || g.top < 0 ||
      g.bottom < 0 || g.left < 0 || g.right < 0 || x.size(1) % g.groups != 0 || out_channels % g.groups != 0)
    return false;
  g.out_h = (x.size(2) + g.top + g.bottom - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.out_w = (x.size(3) + g.left + g.right - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  const int64_t b = values.size(1), fan_in = g.kh * g.kw * x.size(1) / g.groups;
  if (g.out_h < 1 || g.out_w < 1 || values.size(2) != b || !has_block_size(b)) return false;
  if (bias.has_value() && !(bias->device().is_cpu() && bias->scalar_type() == x.scalar_type() && bias->dim() == 1 &&
                            bias->size(0) == out_channels))
    return false;
  return Topology::fits(topology, values.size(0), blocks(out_channels, b), blocks(fan_in, b));
}

std::vector<int64_t> kernel_geometry(const Conv& g, int64_t out_channels) {
  return {g.out_h, g.out_w, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.groups, out_channels / g.groups};
}

at::Tensor padded_nhwc(const at::Tensor& x, const Conv& g) {
  at::Tensor nhwc = x.permute({0, 2, 3, 1});
  if (g.top || g.bottom || g.left || g.right)
    nhwc = at::constant_pad_nd(nhwc, {0, 0, g.left, g.right, g.top, g.bottom});
  return nhwc.contiguous();
}

std::vector<int64_t> ints(c10::SymIntArrayRef values) {
  std::vector<int64_t> out;
  for (const c10::SymInt& v : values) out.push_back(v.expect_int());
  return out;
}

at::Tensor conv2d_cpu(const at::Tensor& x, const at::Tensor& values, const c10::optional<at::Tensor>& bias,
                      at::TensorList topology, c10::SymInt out_channels_, c10::SymIntArrayRef geometry,
                      const c10::optional<at::Tensor>& scores, const c10::optional<at::Tensor>& index,
                      const c10::optional<at::Tensor>& passes, c10::SymInt keep) {
  const int64_t out_channels = out_channels_.expect_int();
  Conv g;
  if (!take(fast() && conv_fits(x, values, bias, topology, out_channels, geometry, g))) {
    py::gil_scoped_acquire gil;
    return python_kernels
        ->conv2d(x, values, optional_to_python(bias), as_vector(topology), out_channels, ints(geometry),
                 optional_to_python(scores), optional_to_python(index), optional_to_python(passes), keep.expect_int())
        .cast<at::Tensor>();
  }
  const int64_t n = x.size(0);
  at::Tensor y = empty_huge({n * g.out_h * g.out_w, out_channels}, x.options());
  c10::optional<at::Tensor> b;
  if (bias.has_value()) b = bias->contiguous();
  const Topology t(topology);
  conv_forward_out(padded_nhwc(x, g), values.contiguous(), b, t.row_ptr, t.row_slots, t.block_col,
                   kernel_geometry(g, out_channels), y);
  return y.view({n, g.out_h, g.out_w, out_channels}).permute({0, 3, 1, 2});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv2d_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& values, at::TensorList topology,
    c10::SymInt out_channels_, c10::SymIntArrayRef geometry, bool has_bias, bool need_x, bool need_values,
    bool need_bias, const c10::optional<at::Tensor>& scores, const c10::optional<at::Tensor>& index,
    const c10::optional<at::Tensor>& passes, c10::SymInt keep) {
  const int64_t out_channels = out_channels_.expect_int();
  Conv g;
  // Grow scores (a RigL update step) take the Python kernel: it merges them into the buffers.
  if (!take(fast() && !scores.has_value() && conv_fits(x, values, c10::nullopt, topology, out_channels, geometry, g) &&
            grad_y.dim() == 4 && grad_y.scalar_type() == x.scalar_type() && grad_y.device().is_cpu() &&
            grad_y.size(0) == x.size(0) && grad_y.size(1) == out_channels && grad_y.size(2) == g.out_h &&
            grad_y.size(3) == g.out_w)) {
    py::gil_scoped_acquire gil;
    return python_kernels
        ->conv2d_backward(grad_y, x, values, as_vector(topology), out_channels, ints(geometry), has_bias, need_x,
                          need_values, need_bias, optional_to_python(scores), optional_to_python(index),
                          optional_to_python(passes), keep.expect_int())
        .cast<std::tuple<at::Tensor, at::Tensor, at::Tensor>>();
  }
  const int64_t n = x.size(0);
  const at::Tensor dy = grad_y.permute({0, 2, 3, 1}).contiguous().view({n * g.out_h * g.out_w, out_channels});
  const at::Tensor padded = padded_nhwc(x, g);
  const std::vector<int64_t> kg = kernel_geometry(g, out_channels);
  const Topology t(topology);
  at::Tensor grad_x = at::empty({0}, x.options()), grad_values = at::empty({0}, values.options());
  at::Tensor grad_bias = at::empty({0}, x.options());
  if (need_values) {
    grad_values = at::empty_like(values);
    conv_weight_grad_out(dy, padded, t.row_slots, t.block_row, t.block_col, kg, grad_values);
  }
  if (need_x) {
    at::Tensor grad_padded = at::zeros(padded.sizes(), x.options().dtype(at::kFloat));
    conv_input_grad_out(dy, values.contiguous(), t.col_ptr, t.col_slots, t.block_row, kg, grad_padded);
    const at::Tensor inner = grad_padded.slice(1, g.top, g.top + x.size(2)).slice(2, g.left, g.left + x.size(3));
    grad_x = at::empty_like(x);  // in x's own memory format, as the fake says
    grad_x.copy_(inner.to(x.scalar_type()).permute({0, 3, 1, 2}));
  }
  if (has_bias && need_bias) grad_bias = dy.sum({0}, /*keepdim=*/false, at::kFloat).to(dy.scalar_type());
  return {grad_x, grad_values, grad_bias};
}

std::unique_ptr<torch::Library> library;  // the CPU registrations, made once

}  // namespace

// The kernels above become the CPU kernels of the operators; `kernels` maps each op to its Python kernel.
void register_kernels(py::dict kernels) {
  TORCH_CHECK(library == nullptr, "the CPU kernels are already registered");
  python_kernels = new PythonKernels{kernels["dsd"],          kernels["dds"],    kernels["sdd"],
                                     kernels["dsd_backward"], kernels["conv2d"], kernels["conv2d_backward"]};
  library = std::make_unique<torch::Library>(torch::Library::IMPL, "rigl_sparse", c10::DispatchKey::CPU, __FILE__,
                                             __LINE__);
  library->impl("dsd", TORCH_FN(dsd_cpu));
  library->impl("dds", TORCH_FN(dds_cpu));
  library->impl("sdd", TORCH_FN(sdd_cpu));
  library->impl("dsd_backward", TORCH_FN(dsd_backward_cpu));
  library->impl("conv2d", TORCH_FN(conv2d_cpu));
  library->impl("conv2d_backward", TORCH_FN(conv2d_backward_cpu));
}

// (calls the CPU kernels ran, calls they handed to the Python kernels) since the process started.
std::tuple<int64_t, int64_t> call_counts() {
  return {taken.load(), handed.load()};
}

void enter_forced_backend() {
  forcing.fetch_add(1);
}

void exit_forced_backend() {
  forcing.fetch_sub(1);
}

}  // namespace cpu
}  // namespace rigl_sparse
