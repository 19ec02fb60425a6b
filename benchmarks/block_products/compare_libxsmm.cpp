// Our block-sparse forward kernel (csrc/cpu/kernels.h) against libxsmm's JIT batch-reduce GEMM on
// the same block products: Y[M, N] = X[M, K] @ W.T for a random block layout of density d.
//
// Built and run by run.sh (once per instruction set: -DRIGL_SPARSE_ISA=avx2 with AVX2 flags and
// libxsmm held to "hsw", or avx512 with "skx").  Both sides get the same packed operands, the same
// OpenMP threads over output block columns, and write the same output; the program checks they agree.
//
// libxsmm side, per output block column j and chunk of 64 rows: one batch-reduce call
// C(B x 64, column-major, ldc = N) = sum over the slots s of row j of Wt_s (B x B) * Xc_s (B x 64),
// where Xc is X packed block-column-major ([K/B][M][B]) and Wt_s the transposed block.
#include <libxsmm.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels.h"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

namespace k = rigl_sparse::cpu::RIGL_SPARSE_ISA;

struct Layout {
  int R, C;
  std::vector<int32_t> row_ptr, row_slots, block_col;
};

Layout random_layout(int R, int C, double density, std::mt19937& rng) {
  Layout l{R, C, std::vector<int32_t>(R + 1, 0), {}, {}};
  std::vector<int> flat(R * C);
  for (int i = 0; i < R * C; ++i) flat[i] = i;
  std::shuffle(flat.begin(), flat.end(), rng);
  flat.resize(std::max(1, static_cast<int>(density * R * C)));
  std::sort(flat.begin(), flat.end());  // slot order = row-major order, so row_slots is the identity
  for (size_t s = 0; s < flat.size(); ++s) {
    l.block_col.push_back(flat[s] % C);
    l.row_slots.push_back(static_cast<int32_t>(s));
    ++l.row_ptr[flat[s] / C + 1];
  }
  for (int r = 0; r < R; ++r) l.row_ptr[r + 1] += l.row_ptr[r];
  return l;
}

template <typename F>
double once_ms(F&& f) {
  const auto a = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <int B>
void compare(int M, int N, double density, int reps) {
  std::mt19937 rng(1);
  const int R = N / B, C = N / B;
  const Layout l = random_layout(R, C, density, rng);
  const int64_t nnzb = l.block_col.size();
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(M) * N), wt(nnzb * B * B);  // wt: transposed blocks (W.T)
  for (float& v : x) v = normal(rng);
  for (float& v : wt) v = normal(rng);
  constexpr int MR = k::rows_per_tile<B>();
  const int64_t panels = (M + MR - 1) / MR;
  std::vector<float> x_panels(panels * C * MR * B), x_columns(static_cast<size_t>(C) * M * B);
  k::pack_block_columns(x.data(), M, panels * MR, N, N, B, 0, C, x_panels.data());
  k::pack_block_columns(x.data(), M, M, N, N, B, 0, C, x_columns.data());
  std::vector<float> y_ours(static_cast<size_t>(M) * N), y_xsmm(static_cast<size_t>(M) * N);

  auto ours = [&] {
#pragma omp parallel for schedule(static)
    for (int j = 0; j < R; ++j)
      k::sparse_matmul<float, B>(x_panels.data(), M, wt.data(), l.row_ptr.data(), l.row_slots.data(),
                                 l.block_col.data(), nullptr, y_ours.data(), N, j, j + 1);
  };
  constexpr int kRows = 64;
  const libxsmm_blasint m = B, n = kRows, kk = B, lda = B, ldb = B, ldc = N;
  const float alpha = 1.0f, beta = 0.0f;
  const int flags = LIBXSMM_GEMM_FLAG_NONE, prefetch = LIBXSMM_GEMM_PREFETCH_NONE;
  const libxsmm_smmfunction_reducebatch_addr kernel =
      libxsmm_smmdispatch_reducebatch_addr(m, n, kk, &lda, &ldb, &ldc, &alpha, &beta, &flags, &prefetch);
  if (kernel == nullptr) {
    std::printf("b=%d: libxsmm returned no kernel\n", B);
    return;
  }
  auto xsmm = [&] {
#pragma omp parallel
    {
      std::vector<const float*> a_ptrs(C), b_ptrs(C);
#pragma omp for schedule(static)
      for (int j = 0; j < R; ++j) {
        const int32_t begin = l.row_ptr[j];
        const unsigned long long count = l.row_ptr[j + 1] - begin;
        for (int m0 = 0; m0 < M; m0 += kRows) {
          for (unsigned long long p = 0; p < count; ++p) {
            const int64_t s = l.row_slots[begin + p];
            a_ptrs[p] = wt.data() + s * B * B;
            b_ptrs[p] = x_columns.data() + (static_cast<int64_t>(l.block_col[s]) * M + m0) * B;
          }
          kernel(a_ptrs.data(), b_ptrs.data(), y_xsmm.data() + static_cast<int64_t>(m0) * N + j * B, &count);
        }
      }
    }
  };
  // Paired: each round times both back to back, so a drift in the machine's speed cancels in the ratio.
  ours();
  xsmm();
  std::vector<double> times_ours, times_xsmm, ratios;
  for (int r = 0; r < reps; ++r) {
    times_ours.push_back(once_ms(ours));
    times_xsmm.push_back(once_ms(xsmm));
    ratios.push_back(times_xsmm.back() / times_ours.back());
  }
  const double t_ours = median(times_ours), t_xsmm = median(times_xsmm);
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < y_ours.size(); ++i) {
    max_err = std::max(max_err, static_cast<double>(std::fabs(y_ours[i] - y_xsmm[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(y_xsmm[i])));
  }
  const double gflop = 2.0 * M * static_cast<double>(nnzb) * B * B / 1e9;
  std::printf("%s b=%d d=%.2f M=%d N=K=%d threads=%d: ours %.2f ms (%.0f GFLOP/s), libxsmm %.2f ms (%.0f GFLOP/s), "
              "ours/libxsmm speed %.2fx (median of %d paired rounds), max |diff| %.2e of max |y| %.2e\n",
              STRINGIFY(RIGL_SPARSE_ISA), B, density, M, N, omp_get_max_threads(), t_ours,
              gflop / t_ours * 1e3, t_xsmm, gflop / t_xsmm * 1e3, median(ratios), reps, max_err,
              max_ref);
  if (!(max_err <= 1e-3 * max_ref)) {
    std::printf("MISMATCH\n");
    std::exit(1);
  }
}

int main(int argc, char** argv) {
  const char* arch = argc > 1 ? argv[1] : "hsw";
  libxsmm_init();
  libxsmm_set_target_arch(arch);
  std::printf("libxsmm %s, target arch %s\n", LIBXSMM_VERSION, libxsmm_get_target_arch());
  const double density = argc > 2 ? std::atof(argv[2]) : 0.1;
  compare<16>(1024, 4096, density, 15);
  compare<32>(1024, 4096, density, 15);
  compare<64>(1024, 4096, density, 15);
  libxsmm_finalize();
  return 0;
}
