// The instruction-set variants of the CPU kernels built into this extension, and the one in use.
#pragma once

#include <string>
#include <vector>

#include "kernel_table.h"

namespace rigl_sparse {
namespace cpu {

// Names of the variants compiled in, narrowest first ("baseline", then "avx2", "avx512" on x86-64).
std::vector<std::string> isa_variants_built();
// Those this CPU can execute.
std::vector<std::string> isa_variants_runnable();
// Makes `name` the variant in use ("" = the widest this CPU runs) and returns its name; throws
// std::invalid_argument, saying why, for a name that is not built or that this CPU cannot run.
std::string select_isa(const std::string& name);
// The table in use (the widest runnable one until select_isa is called).
const KernelTable& kernels();

}  // namespace cpu
}  // namespace rigl_sparse
