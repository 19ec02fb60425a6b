// Which kernel table the CPU ops run: the widest variant built that this CPU executes, unless
// RIGL_SPARSE_CPU_ISA (read by rigl_sparse/ops/cpu_extension.py and passed to select_isa) names another.
// setup.py defines RIGL_SPARSE_HAVE_AVX2 / RIGL_SPARSE_HAVE_AVX512 for the variants it compiled.
#include "isa.h"

#include <atomic>
#include <stdexcept>
#include <string>

namespace rigl_sparse {
namespace cpu {
namespace {

struct Variant {
  const char* name;
  const KernelTable& (*table)();
  const char* const* features;  // what the CPU must report (cpuid, with the OS saving the registers)
};

#if defined(__x86_64__) || defined(__i386__)
constexpr const char* kAvx2Features[] = {"avx2", "fma", nullptr};
constexpr const char* kAvx512Features[] = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", nullptr};

bool cpu_supports(const char* feature) {
  const std::string f = feature;
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx512bw") return __builtin_cpu_supports("avx512bw");
  if (f == "avx512vl") return __builtin_cpu_supports("avx512vl");
  if (f == "avx512dq") return __builtin_cpu_supports("avx512dq");
  return false;
}
#else
bool cpu_supports(const char*) { return false; }
#endif
constexpr const char* kNoFeatures[] = {nullptr};

// Narrowest first.
const Variant kVariants[] = {
    {"baseline", &kernel_table_baseline, kNoFeatures},
#if defined(RIGL_SPARSE_HAVE_AVX2)
    {"avx2", &kernel_table_avx2, kAvx2Features},
#endif
#if defined(RIGL_SPARSE_HAVE_AVX512)
    {"avx512", &kernel_table_avx512, kAvx512Features},
#endif
};

std::string missing_features(const Variant& v) {
  std::string missing;
  for (const char* const* f = v.features; *f != nullptr; ++f)
    if (!cpu_supports(*f)) missing += (missing.empty() ? "" : ", ") + std::string(*f);
  return missing;
}

const Variant& best_variant() {
  const Variant* best = &kVariants[0];
  for (const Variant& v : kVariants)
    if (missing_features(v).empty()) best = &v;
  return *best;
}

std::atomic<const KernelTable*> active{nullptr};

}  // namespace

std::vector<std::string> isa_variants_built() {
  std::vector<std::string> names;
  for (const Variant& v : kVariants) names.emplace_back(v.name);
  return names;
}

std::vector<std::string> isa_variants_runnable() {
  std::vector<std::string> names;
  for (const Variant& v : kVariants)
    if (missing_features(v).empty()) names.emplace_back(v.name);
  return names;
}

std::string select_isa(const std::string& name) {
  if (name.empty()) {
    active.store(&best_variant().table());
    return best_variant().name;
  }
  std::string built;
  for (const Variant& v : kVariants) {
    built += (built.empty() ? "" : ", ") + std::string(v.name);
    if (name != v.name) continue;
    const std::string missing = missing_features(v);
    if (!missing.empty())
      throw std::invalid_argument("RIGL_SPARSE_CPU_ISA=" + name + ": this CPU lacks " + missing +
                                  "; it runs " + best_variant().name + " (unset the variable to use it)");
    active.store(&v.table());
    return v.name;
  }
  const bool known = name == "baseline" || name == "avx2" || name == "avx512";
  throw std::invalid_argument("RIGL_SPARSE_CPU_ISA=" + name +
                              (known ? ": this build has no " + name + " kernels (this host's compiler or "
                                       "architecture did not build them)"
                                     : std::string(": not an instruction-set variant (baseline, avx2, avx512)")) +
                              "; built: " + built);
}

const KernelTable& kernels() {
  const KernelTable* table = active.load();
  if (table == nullptr) {
    select_isa("");
    table = active.load();
  }
  return *table;
}

}  // namespace cpu
}  // namespace rigl_sparse
