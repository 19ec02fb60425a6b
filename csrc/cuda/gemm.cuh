// The tensor-core main loop shared by the CUDA kernels (torch-free).
//
// A CTA accumulates C[TM x TN] += sum over steps of A_s[TM x KC] * B_s[KC x TN] in fp32 WMMA
// fragments.  Each step's A and B tiles are copied global -> shared with cp.async (16-byte chunks,
// zero-filled where a chunk leaves the matrix), STAGES deep, so the copies of later steps overlap the
// MMAs of the current one.  A kernel says where step s's tiles come from; this file does the rest.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cassert>
#include <cstdint>
#include <type_traits>

namespace rigl_sparse {
namespace cuda {

namespace wmma = nvcuda::wmma;

constexpr int kChunk = 32;  // K extent of one pipeline step (divides every block size)
constexpr int kPad = 8;     // shared-memory row padding in elements: breaks bank conflicts, keeps 16-byte rows
constexpr int kVec = 8;     // elements per 16-byte copy

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Copies a ROWS x COLS window of a row-major matrix (leading dimension ld, first element g) into
// shared memory laid out [ROWS][COLS + kPad].  Entries at row >= rows_valid or col >= cols_valid are
// zero.  `vec_ok` says g and ld allow 16-byte copies (g 16-byte aligned, ld a multiple of 8).
template <typename T, int ROWS, int COLS, int THREADS>
__device__ __forceinline__ void load_tile(T* smem, const T* g, int64_t ld, int rows_valid, int cols_valid,
                                          bool vec_ok) {
  static_assert(COLS % kVec == 0, "tile width must be a multiple of 8 elements");
  constexpr int kPerRow = COLS / kVec;
  for (int i = threadIdx.x; i < ROWS * kPerRow; i += THREADS) {
    const int r = i / kPerRow, c = (i % kPerRow) * kVec;
    T* dst = smem + r * (COLS + kPad) + c;
    const T* src = g + r * ld + c;
    if (vec_ok && r < rows_valid && c + kVec <= cols_valid) {
      cp_async16(dst, src);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) dst[e] = (r < rows_valid && c + e < cols_valid) ? src[e] : from_float<T>(0.0f);
    }
  }
}

// Tile geometry and fragments of one CTA.  A is stored [TM][KC + pad] (row-major) or, when A_T, as
// [KC][TM + pad] (A read transposed from a row-major matrix); B is [KC][TN + pad] or, when B_T,
// [TN][KC + pad].  WM x WN warps split the tile.
template <typename T, int TM, int TN, int WM, int WN, bool A_T, bool B_T, int STAGES>
struct Gemm {
  static constexpr int kThreads = WM * WN * 32;
  static constexpr int kWarpM = TM / WM, kWarpN = TN / WN;
  static constexpr int kFM = kWarpM / 16, kFN = kWarpN / 16;
  static constexpr int kAElems = A_T ? kChunk * (TM + kPad) : TM * (kChunk + kPad);
  static constexpr int kBElems = B_T ? TN * (kChunk + kPad) : kChunk * (TN + kPad);
  static constexpr int kStageElems = kAElems + kBElems;
  static constexpr int kScratchBytes = WM * WN * 16 * 16 * static_cast<int>(sizeof(float));
  static constexpr int kPipelineBytes = STAGES * kStageElems * static_cast<int>(sizeof(T));
  static constexpr int kSmemBytes = kPipelineBytes > kScratchBytes ? kPipelineBytes : kScratchBytes;
  static_assert(kWarpM % 16 == 0 && kWarpN % 16 == 0, "warp tiles are whole 16x16 fragments");
  static_assert((kAElems * sizeof(T)) % 32 == 0 && (kBElems * sizeof(T)) % 32 == 0,
                "WMMA needs 32-byte aligned fragments");
  static_assert(STAGES >= 2, "at least double buffering");

  using ALayout = typename std::conditional<A_T, wmma::col_major, wmma::row_major>::type;
  using BLayout = typename std::conditional<B_T, wmma::col_major, wmma::row_major>::type;
  using AccFrag = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

  AccFrag acc[kFM][kFN];
  int warp_m, warp_n;

  __device__ Gemm() {
    const int warp = threadIdx.x / 32;
    warp_m = warp / WN;
    warp_n = warp % WN;
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
      for (int j = 0; j < kFN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
  }

  static __device__ T* a_tile(T* smem, int stage) { return smem + stage * kStageElems; }
  static __device__ T* b_tile(T* smem, int stage) { return smem + stage * kStageElems + kAElems; }

  // Loads A (TM x kChunk of C's rows) from a row-major matrix whose rows are C's rows.
  static __device__ void load_a(T* smem, int stage, const T* g, int64_t ld, int rows_valid, int cols_valid,
                                bool vec_ok) {
    if constexpr (A_T)
      load_tile<T, kChunk, TM, kThreads>(a_tile(smem, stage), g, ld, rows_valid, cols_valid, vec_ok);
    else
      load_tile<T, TM, kChunk, kThreads>(a_tile(smem, stage), g, ld, rows_valid, cols_valid, vec_ok);
  }
  static __device__ void load_b(T* smem, int stage, const T* g, int64_t ld, int rows_valid, int cols_valid,
                                bool vec_ok) {
    if constexpr (B_T)
      load_tile<T, TN, kChunk, kThreads>(b_tile(smem, stage), g, ld, rows_valid, cols_valid, vec_ok);
    else
      load_tile<T, kChunk, TN, kThreads>(b_tile(smem, stage), g, ld, rows_valid, cols_valid, vec_ok);
  }

  __device__ void mma(const T* a, const T* b) {
#pragma unroll
    for (int kk = 0; kk < kChunk; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, ALayout> fa[kFM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb[kFN];
#pragma unroll
      for (int i = 0; i < kFM; ++i) {
        const int row = warp_m * kWarpM + i * 16;
        if constexpr (A_T)
          wmma::load_matrix_sync(fa[i], a + kk * (TM + kPad) + row, TM + kPad);
        else
          wmma::load_matrix_sync(fa[i], a + row * (kChunk + kPad) + kk, kChunk + kPad);
      }
#pragma unroll
      for (int j = 0; j < kFN; ++j) {
        const int col = warp_n * kWarpN + j * 16;
        if constexpr (B_T)
          wmma::load_matrix_sync(fb[j], b + col * (kChunk + kPad) + kk, kChunk + kPad);
        else
          wmma::load_matrix_sync(fb[j], b + kk * (TN + kPad) + col, TN + kPad);
      }
#pragma unroll
      for (int i = 0; i < kFM; ++i)
#pragma unroll
        for (int j = 0; j < kFN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  // Runs the pipeline over n_steps; load(step, stage) issues the copies of one step into a stage.
  // Ends with a barrier, so the caller may reuse the shared memory.
  template <typename Load>
  __device__ void run(T* smem, int n_steps, Load&& load) {
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < n_steps) load(s, s);
      cp_async_commit();
    }
    for (int step = 0; step < n_steps; ++step) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();
      const int next = step + STAGES - 1;  // its stage was consumed at step - 1, by every warp
      if (next < n_steps) load(next, next % STAGES);
      cp_async_commit();
      const int stage = step % STAGES;
      mma(a_tile(smem, stage), b_tile(smem, stage));
    }
    cp_async_wait<0>();
    __syncthreads();
  }

  // Writes the accumulators, converted to T, to a row-major output (leading dimension ld) whose
  // element (0, 0) is C's; rows >= rows_valid and cols >= cols_valid are not written.  bias (may be
  // null) is added per column.  Uses the shared memory as per-warp scratch.
  __device__ void store(void* smem, T* out, int64_t ld, int rows_valid, int cols_valid, const T* bias,
                        bool vec_ok) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float* scratch = reinterpret_cast<float*>(smem) + warp * 256;
    const int r = lane / 2, c0 = (lane % 2) * 8;  // each lane writes 8 consecutive elements of a row
#pragma unroll
    for (int i = 0; i < kFM; ++i)
#pragma unroll
      for (int j = 0; j < kFN; ++j) {
        wmma::store_matrix_sync(scratch, acc[i][j], 16, wmma::mem_row_major);
        __syncwarp();
        const int row = warp_m * kWarpM + i * 16 + r;
        const int col = warp_n * kWarpN + j * 16 + c0;
        alignas(16) T v[kVec];
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          float x = scratch[r * 16 + c0 + e];
          if (bias != nullptr && col + e < cols_valid) x += to_float(bias[col + e]);
          v[e] = from_float<T>(x);
        }
        if (row < rows_valid) {
          T* dst = out + row * ld + col;
          if (vec_ok && col + kVec <= cols_valid) {
            *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
          } else {
            for (int e = 0; e < kVec; ++e)
              if (col + e < cols_valid) dst[e] = v[e];
          }
        }
        __syncwarp();
      }
  }
};

// A topology entry outside its range stops the kernel with a device-side assertion, reported by the next
// CUDA call as torch reports an index out of range, instead of a read out of bounds.  Independent of NDEBUG.
#define RS_DEVICE_REQUIRE(cond)                                                                 \
  do {                                                                                          \
    if (!(cond)) __assert_fail(#cond, __FILE__, static_cast<unsigned>(__LINE__), __func__);     \
  } while (0)

// The largest y (and z) extent of a CUDA grid.
constexpr int kMaxGridY = 65535;

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

template <typename Kernel>
cudaError_t allow_shared_memory(Kernel kernel, int bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

}  // namespace cuda
}  // namespace rigl_sparse
