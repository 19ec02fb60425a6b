// Python bindings of the CPU kernels (module rigl_sparse._C_cpu).  Each function writes into the
// outputs it is given; rigl_sparse/ops/<op>/cpu.py allocates them and registers the cpu backend.
#include "common.h"
#include "entry_points.h"
#include "kernel_table.h"
#include "topology.h"


PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rigl_sparse CPU kernels (block-sparse dsd, dds, sdd and streaming block_scores)";
  m.def("topology_fields", [] {
    return std::vector<std::string>(rigl_sparse::cpu::kTopologyFields.begin(), rigl_sparse::cpu::kTopologyFields.end());
  }, "the names of the topology tensors, in the order the kernels read them");
  m.def("block_sizes", [] {
    return std::vector<int>(std::begin(rigl_sparse::cpu::kBlockSizes), std::end(rigl_sparse::cpu::kBlockSizes));
  }, "the block sizes the kernels are instantiated for (kernel_table.h)");
  m.def("dtypes", [] {
    std::vector<std::string> names;
    for (const auto& d : rigl_sparse::cpu::kDtypes) names.emplace_back(d.name);
    return names;
  }, "the element types the kernels are built for, as torch names them (common.h)");
  m.def("dsd_out", &rigl_sparse::cpu::dsd_out, "out = x @ W.T (+ bias) over the row view");
  m.def("dds_out", &rigl_sparse::cpu::dds_out, "out = dy @ W over the column view");
  m.def("sdd_out", &rigl_sparse::cpu::sdd_out, "out[s] = dy[:, rows(s)].T @ x[:, cols(s)]");
  m.def("block_scores_out", &rigl_sparse::cpu::block_scores_out, "top-k inactive blocks by gradient norm");
  m.def("conv_forward_out", &rigl_sparse::cpu::conv_forward_out, "implicit-GEMM block-sparse conv forward");
  m.def("conv_input_grad_out", &rigl_sparse::cpu::conv_input_grad_out, "conv input gradient, added onto dx_padded");
  m.def("conv_weight_grad_out", &rigl_sparse::cpu::conv_weight_grad_out, "conv weight gradient on active blocks");
  m.def("register_kernels", &rigl_sparse::cpu::register_kernels,
        "make dsd, dds, sdd and dsd_backward's CPU kernels those of csrc/cpu/dispatch.cpp; kernels: {op: the op's "
        "Python kernel}, for every call they do not take");
  m.def("enter_forced_backend", &rigl_sparse::cpu::enter_forced_backend,
        "a use_backend block opens: the CPU kernels hand every call to the Python kernels until it closes");
  m.def("exit_forced_backend", &rigl_sparse::cpu::exit_forced_backend, "a use_backend block closes");
  m.def("call_counts", &rigl_sparse::cpu::call_counts,
        "(calls the registered CPU kernels ran, calls they handed to the Python kernels) in this process");
  m.def("isa_variants_built", &rigl_sparse::cpu::isa_variants_built,
        "the instruction-set variants compiled in, narrowest first");
  m.def("isa_variants_runnable", &rigl_sparse::cpu::isa_variants_runnable, "the variants this CPU executes");
  m.def("select_isa", &rigl_sparse::cpu::select_isa,
        "use variant `name` ('' = the widest this CPU runs); ValueError if not built or not runnable here");
  m.def("active_isa", [] { return std::string(rigl_sparse::cpu::kernels().isa); }, "the variant in use");
  m.def("tile_description", [] { return std::string(rigl_sparse::cpu::kernels().tile); },
        "the register tiles of the variant in use");
  m.def("kernel_path", &rigl_sparse::cpu::kernel_path,
        "which path the kernels take for an op (dsd, dds, sdd, dsd_backward) on M rows of block size b, for a "
        "layer whose blocks take blocks_bytes in fp32, in words",
        pybind11::arg("op"), pybind11::arg("M"), pybind11::arg("B"), pybind11::arg("blocks_bytes") = 0);
  m.def("rows_per_tile", &rigl_sparse::cpu::rows_per_tile, "rows of one register tile for a block size");
  m.attr("openmp") =
#if defined(_OPENMP)
      true;
#else
      false;
#endif
}
