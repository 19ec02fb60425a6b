// Block-sparse matmuls of the `cuda` backend on tensor cores (torch-free): dsd (forward), dds (input
// gradient) and sdd (weight gradient on the active blocks).  T is __half or __nv_bfloat16, B the block
// size (32, 64 or 128); accumulation is fp32.  Matrices are row-major and contiguous; `values` is
// [nnzb][B][B].  Each launcher takes raw device pointers and a stream and returns the launch's
// cudaError_t.  Dimensions B does not divide are handled as the layout pads them: reads past the
// matrix are zero, writes past it are skipped.
#pragma once

#include "gemm.cuh"

namespace rigl_sparse {
namespace cuda {

// Tile shapes per kernel and block size.  dsd/dds: a CTA owns TM rows of the output and one block
// column of it (TN = B).  sdd: a CTA owns one B x B block of the weight gradient.
template <typename T, int B>
struct Shapes {
  static_assert(B == 32 || B == 64 || B == 128, "CUDA kernels take block sizes 32, 64, 128");
  static constexpr int kRows = 128;  // TM of dsd/dds
  using Matmul = Gemm<T, kRows, B, (B == 128 ? 2 : 4), (B == 32 ? 1 : (B == 64 ? 2 : 4)), false, false, 3>;
  using MatmulTransposedB = Gemm<T, kRows, B, (B == 128 ? 2 : 4), (B == 32 ? 1 : (B == 64 ? 2 : 4)), false, true, 3>;
  using Weight = Gemm<T, B, B, 2, (B == 128 ? 4 : 2), true, false, 3>;
};

// ---------------------------------------------------------------------------------------------------
// dsd: out[M, N] = x[M, K] @ W.T (+ bias), W block-sparse over the row view.  Grid (M tiles, R).
template <typename T, int B>
__global__ void __launch_bounds__(Shapes<T, B>::MatmulTransposedB::kThreads)
    dsd_kernel(const T* __restrict__ x, const T* __restrict__ values, const T* __restrict__ bias,
               const int32_t* __restrict__ row_ptr, const int32_t* __restrict__ row_slots,
               const int32_t* __restrict__ block_col, int nnzb, int M, int K, int N, T* __restrict__ out,
               bool x_vec, bool values_vec, bool out_vec) {
  using G = typename Shapes<T, B>::MatmulTransposedB;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int m0 = blockIdx.x * Shapes<T, B>::kRows, r = blockIdx.y;
  const int first = row_ptr[r], last = row_ptr[r + 1], in_blocks = (K + B - 1) / B;
  RS_DEVICE_REQUIRE(0 <= first && first <= last && last <= nnzb);
  const int n_steps = (last - first) * (B / kChunk);
  G gemm;
  gemm.run(smem, n_steps, [&](int step, int stage) {
    const int slot = row_slots[first + step / (B / kChunk)], kc = (step % (B / kChunk)) * kChunk;
    RS_DEVICE_REQUIRE(0 <= slot && slot < nnzb);
    RS_DEVICE_REQUIRE(0 <= block_col[slot] && block_col[slot] < in_blocks);
    const int col = block_col[slot] * B + kc;
    G::load_a(smem, stage, x + static_cast<int64_t>(m0) * K + col, K, M - m0, K - col, x_vec);
    // B(j, i) = W[r*B + i][col + j] = values[slot][i][kc + j]: stored [TN = i][KC = j].
    G::load_b(smem, stage, values + static_cast<int64_t>(slot) * B * B + kc, B, B, kChunk, values_vec);
  });
  gemm.store(smem, out + static_cast<int64_t>(m0) * N + r * B, N, M - m0, N - r * B,
             bias == nullptr ? nullptr : bias + r * B, out_vec);
}

template <typename T, int B>
cudaError_t dsd(const T* x, const T* values, const T* bias, const int32_t* row_ptr, const int32_t* row_slots,
                const int32_t* block_col, int nnzb, int M, int K, int N, T* out, cudaStream_t stream) {
  using G = typename Shapes<T, B>::MatmulTransposedB;
  if (M == 0 || N == 0) return cudaSuccess;
  if ((N + B - 1) / B > kMaxGridY) return cudaErrorInvalidConfiguration;
  const dim3 grid((M + Shapes<T, B>::kRows - 1) / Shapes<T, B>::kRows, (N + B - 1) / B);
  if (cudaError_t err = allow_shared_memory(dsd_kernel<T, B>, G::kSmemBytes); err != cudaSuccess) return err;
  dsd_kernel<T, B><<<grid, G::kThreads, G::kSmemBytes, stream>>>(x, values, bias, row_ptr, row_slots, block_col,
                                                                  nnzb, M, K, N, out, aligned16(x) && K % kVec == 0,
                                                                  aligned16(values), aligned16(out) && N % kVec == 0);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------
// dds: out[M, K] = dy[M, N] @ W over the column view.  Grid (M tiles, C).
template <typename T, int B>
__global__ void __launch_bounds__(Shapes<T, B>::Matmul::kThreads)
    dds_kernel(const T* __restrict__ dy, const T* __restrict__ values, const int32_t* __restrict__ col_ptr,
               const int32_t* __restrict__ col_slots, const int32_t* __restrict__ block_row, int nnzb, int M, int N,
               int K, T* __restrict__ out, bool dy_vec, bool values_vec, bool out_vec) {
  using G = typename Shapes<T, B>::Matmul;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int m0 = blockIdx.x * Shapes<T, B>::kRows, c = blockIdx.y;
  const int first = col_ptr[c], last = col_ptr[c + 1], in_blocks = (N + B - 1) / B;
  RS_DEVICE_REQUIRE(0 <= first && first <= last && last <= nnzb);
  const int n_steps = (last - first) * (B / kChunk);
  G gemm;
  gemm.run(smem, n_steps, [&](int step, int stage) {
    const int slot = col_slots[first + step / (B / kChunk)], kc = (step % (B / kChunk)) * kChunk;
    RS_DEVICE_REQUIRE(0 <= slot && slot < nnzb);
    RS_DEVICE_REQUIRE(0 <= block_row[slot] && block_row[slot] < in_blocks);
    const int row = block_row[slot] * B + kc;
    G::load_a(smem, stage, dy + static_cast<int64_t>(m0) * N + row, N, M - m0, N - row, dy_vec);
    // B(i, j) = W[row + i][c*B + j] = values[slot][kc + i][j]: stored [KC = i][TN = j].
    G::load_b(smem, stage, values + static_cast<int64_t>(slot) * B * B + kc * B, B, kChunk, B, values_vec);
  });
  gemm.store(smem, out + static_cast<int64_t>(m0) * K + c * B, K, M - m0, K - c * B, nullptr, out_vec);
}

template <typename T, int B>
cudaError_t dds(const T* dy, const T* values, const int32_t* col_ptr, const int32_t* col_slots,
                const int32_t* block_row, int nnzb, int M, int N, int K, T* out, cudaStream_t stream) {
  using G = typename Shapes<T, B>::Matmul;
  if (M == 0 || K == 0) return cudaSuccess;
  if ((K + B - 1) / B > kMaxGridY) return cudaErrorInvalidConfiguration;
  const dim3 grid((M + Shapes<T, B>::kRows - 1) / Shapes<T, B>::kRows, (K + B - 1) / B);
  if (cudaError_t err = allow_shared_memory(dds_kernel<T, B>, G::kSmemBytes); err != cudaSuccess) return err;
  dds_kernel<T, B><<<grid, G::kThreads, G::kSmemBytes, stream>>>(dy, values, col_ptr, col_slots, block_row, nnzb, M,
                                                                  N, K, out, aligned16(dy) && N % kVec == 0,
                                                                  aligned16(values), aligned16(out) && K % kVec == 0);
  return cudaGetLastError();
}

// ---------------------------------------------------------------------------------------------------
// sdd: out[s] = dy[:, rows(s)].T @ x[:, cols(s)] for every slot s (the active blocks of dW).  Grid (nnzb).
template <typename T, int B>
__global__ void __launch_bounds__(Shapes<T, B>::Weight::kThreads)
    sdd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const int32_t* __restrict__ block_row,
               const int32_t* __restrict__ block_col, int M, int N, int K, T* __restrict__ out, bool dy_vec,
               bool x_vec, bool out_vec) {
  using G = typename Shapes<T, B>::Weight;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  const int64_t slot = blockIdx.x;
  RS_DEVICE_REQUIRE(0 <= block_row[slot] && block_row[slot] < (N + B - 1) / B);
  RS_DEVICE_REQUIRE(0 <= block_col[slot] && block_col[slot] < (K + B - 1) / B);
  const int row = block_row[slot] * B, col = block_col[slot] * B;
  G gemm;
  gemm.run(smem, (M + kChunk - 1) / kChunk, [&](int step, int stage) {
    const int m0 = step * kChunk;
    // A(i, m) = dy[m][row + i]: dy's rows m0.. read as [KC = m][TM = i].
    G::load_a(smem, stage, dy + static_cast<int64_t>(m0) * N + row, N, M - m0, N - row, dy_vec);
    G::load_b(smem, stage, x + static_cast<int64_t>(m0) * K + col, K, M - m0, K - col, x_vec);
  });
  gemm.store(smem, out + slot * B * B, B, B, B, nullptr, out_vec);
}

template <typename T, int B>
cudaError_t sdd(const T* dy, const T* x, const int32_t* block_row, const int32_t* block_col, int64_t nnzb, int M,
                int N, int K, T* out, cudaStream_t stream) {
  using G = typename Shapes<T, B>::Weight;
  if (nnzb == 0) return cudaSuccess;
  if (cudaError_t err = allow_shared_memory(sdd_kernel<T, B>, G::kSmemBytes); err != cudaSuccess) return err;
  sdd_kernel<T, B><<<static_cast<unsigned>(nnzb), G::kThreads, G::kSmemBytes, stream>>>(
      dy, x, block_row, block_col, M, N, K, out, aligned16(dy) && N % kVec == 0, aligned16(x) && K % kVec == 0,
      aligned16(out));
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace rigl_sparse
