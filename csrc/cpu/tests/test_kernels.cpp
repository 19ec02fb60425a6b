// C++ unit tests of the torch-free CPU kernels against naive loops (run by ctest, once per
// instruction-set variant: compiled with -DRIGL_SPARSE_ISA=<variant> and its flags; a variant this
// CPU cannot run exits with 77, which ctest reports as skipped).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../conv_kernels.h"
#include "../kernels.h"
#include "../top_k.h"

namespace rigl_sparse {
namespace cpu {
namespace RIGL_SPARSE_ISA {
namespace {

int failures = 0;

void expect_close(float got, float want, float tol, const char* what, long i) {
  if (!(std::fabs(got - want) <= tol * (1.0f + std::fabs(want)))) {
    if (failures < 10) std::printf("FAIL %s[%ld]: got %g, want %g\n", what, i, got, want);
    ++failures;
  }
}

// A random topology of n_blocks among R x C with its row and column views.
struct Topology {
  int R, C, B;
  std::vector<int32_t> block_row, block_col, row_ptr, row_slots, col_ptr, col_slots;
};

Topology make_topology(int R, int C, int B, int nnzb, std::mt19937& rng) {
  Topology t{R, C, B, {}, {}, {}, {}, {}, {}};
  std::vector<int> flat(R * C);
  for (int i = 0; i < R * C; ++i) flat[i] = i;
  std::shuffle(flat.begin(), flat.end(), rng);
  flat.resize(nnzb);
  for (int f : flat) {
    t.block_row.push_back(f / C);
    t.block_col.push_back(f % C);
  }
  t.row_ptr.assign(R + 1, 0);
  t.col_ptr.assign(C + 1, 0);
  for (int s = 0; s < nnzb; ++s) {
    ++t.row_ptr[t.block_row[s] + 1];
    ++t.col_ptr[t.block_col[s] + 1];
  }
  for (int r = 0; r < R; ++r) t.row_ptr[r + 1] += t.row_ptr[r];
  for (int c = 0; c < C; ++c) t.col_ptr[c + 1] += t.col_ptr[c];
  std::vector<int> order(nnzb);
  for (int s = 0; s < nnzb; ++s) order[s] = s;
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return t.block_row[a] * C + t.block_col[a] < t.block_row[b] * C + t.block_col[b];
  });
  t.row_slots.assign(order.begin(), order.end());
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return t.block_col[a] * R + t.block_row[a] < t.block_col[b] * R + t.block_row[b];
  });
  t.col_slots.assign(order.begin(), order.end());
  return t;
}

template <int B>
void test_matmuls(int M, int out_f, int in_f, double density, std::mt19937& rng) {
  const int R = (out_f + B - 1) / B, C = (in_f + B - 1) / B;
  const int nnzb = std::max(1, static_cast<int>(density * R * C));
  Topology t = make_topology(R, C, B, nnzb, rng);
  std::normal_distribution<float> normal;
  std::vector<float> values(nnzb * B * B), x(M * in_f), dy(M * out_f), dense(R * B * C * B, 0.0f);
  for (auto& v : values) v = normal(rng);
  for (auto& v : x) v = normal(rng);
  for (auto& v : dy) v = normal(rng);
  for (int s = 0; s < nnzb; ++s)  // dense W with padding rows/columns zeroed as the layout keeps them
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) {
        const int r = t.block_row[s] * B + i, c = t.block_col[s] * B + j;
        if (r >= out_f || c >= in_f) values[(s * B + i) * B + j] = 0.0f;
        dense[r * C * B + c] = values[(s * B + i) * B + j];
      }
  auto W = [&](int r, int c) { return dense[r * C * B + c]; };

  std::vector<float> bias(out_f);
  for (auto& v : bias) v = normal(rng);
  auto want_y = [&](int m, int n) {
    double want = bias[n];
    for (int k = 0; k < in_f; ++k) want += double(x[m * in_f + k]) * W(n, k);
    return float(want);
  };

  // dsd: y = x @ W.T + bias, split over rows (two ranges) and over block rows (two ranges)
  std::vector<float> wt(values.size()), y(M * out_f);
  for (int s = 0; s < nnzb; ++s)
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) wt[(s * B + j) * B + i] = values[(s * B + i) * B + j];
  for (int split = 0; split < 2; ++split) {
    std::fill(y.begin(), y.end(), NAN);
    if (split == 0) {
      view_rows<float, B>(x.data(), in_f, in_f, wt.data(), t.row_ptr.data(), t.row_slots.data(), t.block_col.data(),
                          bias.data(), y.data(), out_f, out_f, 0, M / 2, 0, R);
      view_rows<float, B>(x.data(), in_f, in_f, wt.data(), t.row_ptr.data(), t.row_slots.data(), t.block_col.data(),
                          bias.data(), y.data(), out_f, out_f, M / 2, M, 0, R);
    } else {
      view_rows<float, B>(x.data(), in_f, in_f, wt.data(), t.row_ptr.data(), t.row_slots.data(), t.block_col.data(),
                          bias.data(), y.data(), out_f, out_f, 0, M, 0, R / 2);
      view_rows<float, B>(x.data(), in_f, in_f, wt.data(), t.row_ptr.data(), t.row_slots.data(), t.block_col.data(),
                          bias.data(), y.data(), out_f, out_f, 0, M, R / 2, R);
    }
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < out_f; ++n) expect_close(y[m * out_f + n], want_y(m, n), 1e-4f * B, "dsd", m * out_f + n);
  }

  // dsd of the first rows (up to kDotRows) with W as stored: x zero-padded to C * B columns
  for (int rows = 1; rows <= kDotRows && rows <= M; ++rows) {
    std::vector<float> padded(rows * C * B, 0.0f);
    for (int m = 0; m < rows; ++m)
      for (int k = 0; k < in_f; ++k) padded[m * C * B + k] = x[m * in_f + k];
    std::fill(y.begin(), y.end(), NAN);
    dot_rows<float, B>(padded.data(), C * B, rows, values.data(), t.row_ptr.data(), t.row_slots.data(),
                       t.block_col.data(), bias.data(), y.data(), out_f, out_f, 0, R);
    for (int m = 0; m < rows; ++m)
      for (int n = 0; n < out_f; ++n) expect_close(y[m * out_f + n], want_y(m, n), 1e-4f * B, "dot", m * out_f + n);
  }

  // dds: dx = dy @ W
  std::vector<float> dx(M * in_f, NAN);
  view_rows<float, B>(dy.data(), out_f, out_f, values.data(), t.col_ptr.data(), t.col_slots.data(), t.block_row.data(),
                      nullptr, dx.data(), in_f, in_f, 0, M, 0, C);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < in_f; ++k) {
      double want = 0;
      for (int n = 0; n < out_f; ++n) want += double(dy[m * out_f + n]) * W(n, k);
      expect_close(dx[m * in_f + k], float(want), 1e-4f * B, "dds", m * in_f + k);
    }

  // sdd: dvalues[s] = dy[:, rows].T @ x[:, cols], the rows in two ranges summed into one accumulator
  std::vector<float> dv(nnzb * B * B, 0.0f);
  sdd_rows<float, B>(dy.data(), out_f, out_f, x.data(), in_f, in_f, t.row_slots.data(), t.block_row.data(),
                     t.block_col.data(), dv.data(), 0, nnzb, 0, M / 3);
  sdd_rows<float, B>(dy.data(), out_f, out_f, x.data(), in_f, in_f, t.row_slots.data(), t.block_row.data(),
                     t.block_col.data(), dv.data(), 0, nnzb, M / 3, M);
  for (int s = 0; s < nnzb; ++s)
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) {
        const int r = t.block_row[s] * B + i, c = t.block_col[s] * B + j;
        double want = 0;
        if (r < out_f && c < in_f)
          for (int m = 0; m < M; ++m) want += double(dy[m * out_f + r]) * x[m * in_f + c];
        expect_close(dv[(s * B + i) * B + j], float(want), 1e-4f * M, "sdd", (s * B + i) * B + j);
      }

  // bias gradient: column sums of dy
  std::vector<float> sums(out_f, 0.0f);
  column_sums(dy.data(), out_f, out_f, 0, M, sums.data());
  for (int n = 0; n < out_f; ++n) {
    double want = 0;
    for (int m = 0; m < M; ++m) want += dy[m * out_f + n];
    expect_close(sums[n], float(want), 1e-5f * M, "column_sums", n);
  }
}

void test_bf16_round_trip() {
  const float cases[] = {0.0f, 1.0f, -2.5f, 3.14159f, 1e-20f, 65504.0f};
  for (float f : cases) expect_close(to_float(from_float<bf16>(f)), f, 1.0f / 128, "bf16", 0);
  expect_close(to_float(from_float<bf16>(1.0f + 1.0f / 256)), 1.0f, 0.0f, "bf16 ties to even", 1);
}

void test_top_k() {
  const float scores[] = {1.0f, 3.0f, -INFINITY, 3.0f, NAN, 0.5f};
  float top[6];
  int64_t index[6];
  top_k(scores, 6, 4, top, index);
  const int64_t want[] = {4, 1, 3, 0};  // NaN first, then ties to the lower index
  for (int i = 0; i < 4; ++i)
    if (index[i] != want[i]) {
      std::printf("FAIL top_k[%d]: got %ld, want %ld\n", i, static_cast<long>(index[i]), static_cast<long>(want[i]));
      ++failures;
    }
  top_k(scores, 6, 6, top, index);
  if (index[5] != -1 || top[5] != -INFINITY) {
    std::printf("FAIL top_k: an active (-inf) block was returned as a candidate\n");
    ++failures;
  }
}

// The implicit-GEMM conv kernels against the explicit patch matrix and naive loops.
template <int B>
void test_conv(int N, int C, int out_c, int H, int W, int KH, int KW, int S, int D, int G, double density,
               std::mt19937& rng) {
  const int64_t OH = (H - D * (KH - 1) - 1) / S + 1, OW = (W - D * (KW - 1) - 1) / S + 1;
  const ConvShape g{N, H, W, C, OH, OW, KH, KW, S, S, D, D, G, out_c / G};
  const int64_t M = patch_rows(g), K = patch_cols(g);
  const int R = (out_c + B - 1) / B, Cb = static_cast<int>((K + B - 1) / B);
  const int nnzb = std::max(1, static_cast<int>(density * R * Cb));
  const Topology t = make_topology(R, Cb, B, nnzb, rng);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(N) * H * W * C), values(static_cast<size_t>(nnzb) * B * B);
  std::vector<float> dy(M * out_c);
  for (float& v : x) v = normal(rng);
  for (float& v : values) v = normal(rng);
  for (float& v : dy) v = normal(rng);
  // Zero the padding of blocks that reach past the real [out_c, K] matrix, as the layout keeps it.
  for (int s = 0; s < nnzb; ++s)
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j)
        if (t.block_row[s] * B + i >= out_c || t.block_col[s] * B + j >= K) values[(s * B + i) * B + j] = 0.0f;
  // Patches per group: patches[grp][m][k].
  std::vector<float> patches(G * M * K), weight(static_cast<size_t>(out_c) * K, 0.0f);
  for (int grp = 0; grp < G; ++grp)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        patches[(grp * M + m) * K + k] = x[origin(g, m) + column_offset(g, k, grp * group_channels(g))];
  for (int s = 0; s < nnzb; ++s)
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) {
        const int64_t r = t.block_row[s] * B + i, k = t.block_col[s] * B + j;
        if (r < out_c && k < K) weight[r * K + k] = values[(s * B + i) * B + j];
      }
  // Forward (W.T blocks).
  std::vector<float> blocks_t(values.size());
  for (int s = 0; s < nnzb; ++s)
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) blocks_t[(s * B + j) * B + i] = values[(s * B + i) * B + j];
  std::vector<float> out(M * out_c);
  const int64_t panels = (M + rows_per_tile<B>() - 1) / rows_per_tile<B>();
  conv_forward<float, B>(x.data(), g, blocks_t.data(), t.row_ptr.data(), t.row_slots.data(), t.block_col.data(),
                         nullptr, out.data(), out_c, 0, panels);
  for (int64_t m = 0; m < M; ++m)
    for (int o = 0; o < out_c; ++o) {
      float want = 0.0f;
      for (int64_t k = 0; k < K; ++k) want += patches[((o / g.OG) * M + m) * K + k] * weight[o * K + k];
      expect_close(out[m * out_c + o], want, 1e-4f, "conv_forward", m * out_c + o);
    }
  // Input gradient.
  std::vector<float> dx(x.size(), 0.0f), dx_want(x.size(), 0.0f);
  conv_input_grad<float, B>(dy.data(), out_c, g, values.data(), t.col_ptr.data(), t.col_slots.data(),
                            t.block_row.data(), dx.data(), 0, N);
  for (int grp = 0; grp < G; ++grp)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) {
        float grad = 0.0f;
        for (int64_t o = grp * g.OG; o < (grp + 1) * g.OG; ++o) grad += dy[m * out_c + o] * weight[o * K + k];
        dx_want[origin(g, m) + column_offset(g, k, grp * group_channels(g))] += grad;
      }
  for (size_t i = 0; i < dx.size(); ++i) expect_close(dx[i], dx_want[i], 1e-4f, "conv_input_grad", static_cast<long>(i));
  // Weight gradient on the active blocks.
  std::vector<float> dy_cols(static_cast<size_t>(R) * M * B), dvalues(values.size());
  pack_block_columns(dy.data(), M, M, out_c, out_c, B, 0, R, dy_cols.data());
  conv_weight_grad<float, B>(dy_cols.data(), x.data(), g, t.row_slots.data(), t.block_row.data(),
                             t.block_col.data(), dvalues.data(), 0, nnzb);
  for (int s = 0; s < nnzb; ++s)
    for (int i = 0; i < B; ++i)
      for (int j = 0; j < B; ++j) {
        const int64_t r = t.block_row[s] * B + i, k = t.block_col[s] * B + j;
        float want = 0.0f;
        if (r < out_c && k < K)
          for (int64_t m = 0; m < M; ++m) want += dy[m * out_c + r] * patches[((r / g.OG) * M + m) * K + k];
        expect_close(dvalues[(s * B + i) * B + j], want, 1e-4f, "conv_weight_grad", (s * B + i) * B + j);
      }
}

int run_all() {
  std::mt19937 rng(0);
  test_matmuls<4>(13, 10, 7, 0.5, rng);
  test_matmuls<8>(9, 24, 17, 0.4, rng);
  test_matmuls<16>(21, 40, 50, 0.3, rng);
  test_matmuls<16>(2, 40, 50, 0.3, rng);
  test_matmuls<32>(17, 70, 64, 0.5, rng);
  test_matmuls<32>(301, 64, 95, 0.5, rng);  // several row tiles and sdd micro-kernel pieces
  test_matmuls<16>(100, 40, 700, 0.2, rng);  // several row groups (dsd) and sdd chunks
  test_matmuls<16>(200, 2048, 1000, 0.5, rng);  // 4 MB of blocks: row groups past L2 (group_bytes), several
  test_matmuls<64>(5, 128, 100, 0.5, rng);
  test_matmuls<128>(3, 130, 256, 0.5, rng);
  test_bf16_round_trip();
  test_top_k();
  // Convolutions: B divides C (block = channels of one tap) and not; stride, dilation, ragged out_c.
  test_conv<8>(2, 16, 20, 7, 6, 3, 3, 1, 1, 1, 0.4, rng);
  test_conv<4>(3, 6, 9, 9, 8, 3, 2, 2, 2, 1, 0.5, rng);
  test_conv<16>(2, 32, 48, 5, 5, 1, 1, 1, 1, 1, 0.6, rng);
  test_conv<32>(1, 64, 40, 6, 7, 3, 3, 1, 1, 1, 0.3, rng);
  // Groups: b divides out/groups; per-group channels a multiple of b or not.
  test_conv<4>(2, 16, 16, 6, 5, 3, 3, 1, 1, 2, 0.5, rng);
  test_conv<8>(2, 12, 32, 6, 6, 3, 3, 2, 1, 4, 0.5, rng);
  return failures;
}

}  // namespace
}  // namespace RIGL_SPARSE_ISA
}  // namespace cpu
}  // namespace rigl_sparse

#define RIGL_SPARSE_STRINGIFY_(x) #x
#define RIGL_SPARSE_STRINGIFY(x) RIGL_SPARSE_STRINGIFY_(x)

int main() {
  const char* isa = RIGL_SPARSE_STRINGIFY(RIGL_SPARSE_ISA);
#if defined(__x86_64__) && defined(__AVX512F__)
  const bool runs = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#elif defined(__x86_64__) && defined(__AVX2__)
  const bool runs = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  const bool runs = true;
#endif
  if (!runs) {
    std::printf("this CPU cannot run the %s kernels: skipped\n", isa);
    return 77;
  }
  const int failures = rigl_sparse::cpu::RIGL_SPARSE_ISA::run_all();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("all CPU kernel tests passed (%s)\n", isa);
  return 0;
}
