// Instantiates every CUDA kernel for every dtype and block size, so that `nvcc -c` of this file checks
// the torch-free kernel headers for each target architecture (CMake target cuda_compile_check).
#include "../kernels.cuh"

namespace rigl_sparse {
namespace cuda {

template <typename T, int B>
void instantiate() {
  const T* c = nullptr;
  T* o = nullptr;
  const int32_t* i = nullptr;
  dsd<T, B>(c, c, c, i, i, i, 0, 0, 0, 0, o, nullptr);
  dds<T, B>(c, c, i, i, i, 0, 0, 0, 0, o, nullptr);
  sdd<T, B>(c, c, i, i, 0, 0, 0, 0, o, nullptr);
  (void)block_scores_workspace_bytes<B>(0, 0, 0, 1);
  block_scores<T, B>(c, c, nullptr, 0, 0, 0, 0, nullptr, 0, 1, nullptr, nullptr, nullptr);
}

template void instantiate<__half, 32>();
template void instantiate<__half, 64>();
template void instantiate<__half, 128>();
template void instantiate<__nv_bfloat16, 32>();
template void instantiate<__nv_bfloat16, 64>();
template void instantiate<__nv_bfloat16, 128>();

}  // namespace cuda
}  // namespace rigl_sparse
