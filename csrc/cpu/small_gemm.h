// Register-blocked matrix products for the small matrices of one training
// step: a batch of tens of rows against weights of a few hundred columns.
//
// Why not at::mm: at these sizes MKL on the AMD CPUs this project runs on
// reaches a quarter of the FMA units' peak (about 45 GFLOP/s on two threads
// for (32, 300) x (300, 100)), and its transposed-left product, the weight
// gradient dz^T x, about half that. The loops below keep a tile of the output
// in registers for the whole inner dimension and read each operand from L1,
// as a BLIS micro-kernel does, but without packing: the operands are small
// enough to stay in L1/L2 as they are, and packing would cost as much as the
// product saves.
//
// Two micro-kernels cover the three products of a layer:
// - dot tiles (x w^T, both operands contiguous along the inner dimension):
//   MR x NR dot products, vectorised along k, reduced once at the end;
// - broadcast tiles (dz w and dz^T x, the right operand contiguous along
//   the output's columns): MR rows x NV vectors of columns, each step
//   broadcasting one left element against NV loaded vectors.
// The output columns are split across threads; every output element is summed
// by one thread in a fixed order, so results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastffnn::cpu::gemm {

using at::vec::Vectorized;

// The least multiply-adds worth waking a second thread for; see row_ops.h.
constexpr int64_t kParallelWork = 131072;

// Whether a product of (m, k) by (k, n) is small enough for these loops to beat
// at::mm. Measured on the project's VM (benchmarks/RESULTS.md): the loops win
// while the left operand's rows number at most a few hundred; beyond that
// MKL's cache blocking and packing pay for themselves.
inline bool applies(int64_t m, int64_t n, int64_t k) {
  return m <= 256 && n <= 4096 && k <= 4096;
}

template <typename T>
inline T hsum(const Vectorized<T>& v) {
  alignas(64) T lanes[Vectorized<T>::size()];
  v.store(lanes);
  T s = lanes[0];
  for (int i = 1; i < Vectorized<T>::size(); ++i) s += lanes[i];
  return s;
}

// Stores the sums of four accumulators' lanes to c[0..3]. With AVX2, three
// horizontal adds and one cross-lane add, where four separate reductions
// would take four times as many shuffles: with a 3 x 4 tile over k = 300 the
// reductions are otherwise a fifth of the work.
template <typename T>
inline void store_sums4(const Vectorized<T>* acc, T* c) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    _mm_storeu_ps(c, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    return;
  } else if constexpr (std::is_same_v<T, double>) {
    const __m256d h01 = _mm256_hadd_pd(acc[0], acc[1]), h23 = _mm256_hadd_pd(acc[2], acc[3]);
    _mm256_storeu_pd(c, _mm256_add_pd(_mm256_blend_pd(h01, h23, 0b1100), _mm256_permute2f128_pd(h01, h23, 0x21)));
    return;
  }
#endif
  for (int j = 0; j < 4; ++j) c[j] = hsum(acc[j]);
}

// ------------------------------------------------------------- dot tiles
// C(i, j) = sum_p A[i * lda + p] * B[j * ldb + p] for i < MR, j < NR.
template <typename T, int MR, int NR>
void dot_tile(int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  V acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) acc[i][j] = V(T(0));
  int64_t p = 0;
  for (; p + W <= k; p += W) {
    V a[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) a[i] = V::loadu(A + i * lda + p);
#pragma GCC unroll 16
    for (int j = 0; j < NR; ++j) {
      const V b = V::loadu(B + j * ldb + p);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][j] = at::vec::fmadd(a[i], b, acc[i][j]);
    }
  }
  if (p < k) {  // the tail: lanes past k load as zero
    const int64_t c = k - p;
    V a[MR];
    for (int i = 0; i < MR; ++i) a[i] = V::loadu(A + i * lda + p, c);
    for (int j = 0; j < NR; ++j) {
      const V b = V::loadu(B + j * ldb + p, c);
      for (int i = 0; i < MR; ++i) acc[i][j] = at::vec::fmadd(a[i], b, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR == 4) {
      store_sums4(acc[i], C + i * ldc);
    } else {
      for (int j = 0; j < NR; ++j) C[i * ldc + j] = hsum(acc[i][j]);
    }
  }
}

template <typename T>
using DotTile = void (*)(int64_t, const T*, int64_t, const T*, int64_t, T*, int64_t);

constexpr int kDotMR = 3, kDotNR = 4;

template <typename T, int MR, int... NR>
constexpr std::array<DotTile<T>, sizeof...(NR)> dot_row(std::integer_sequence<int, NR...>) {
  return {&dot_tile<T, MR, NR + 1>...};
}
template <typename T, int... MR>
constexpr std::array<std::array<DotTile<T>, kDotNR>, sizeof...(MR)> dot_table(std::integer_sequence<int, MR...>) {
  return {dot_row<T, MR + 1>(std::make_integer_sequence<int, kDotNR>())...};
}

// C (m, n) = A (m, k) B(n, k)^T, every matrix row-major with the given row
// strides and unit column stride.
template <typename T>
void nt(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc) {
  static constexpr auto table = dot_table<T>(std::make_integer_sequence<int, kDotMR>());
  const int64_t blocks = (n + kDotNR - 1) / kDotNR;
  const int64_t grain = std::max<int64_t>(1, kParallelWork / std::max<int64_t>(m * k * kDotNR, 1));
  // Each thread takes whole column blocks: the NR rows of B stay in L1 while
  // the tiles sweep down all of A.
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t j = blk * kDotNR, nr = std::min<int64_t>(kDotNR, n - j);
      for (int64_t i = 0; i < m; i += kDotMR) {
        const int64_t mr = std::min<int64_t>(kDotMR, m - i);
        table[mr - 1][nr - 1](k, A + i * lda, lda, B + j * ldb, ldb, C + i * ldc + j, ldc);
      }
    }
  });
}

// ------------------------------------------------------- broadcast tiles
// C(i, j) = sum_p A[i * ars + p * aks] * B[p * ldb + j] for i < MR and j <
// NV vectors; B and C here are panels NV vectors wide (padded by the caller at
// the right edge).
template <typename T, int MR, int NV>
void broadcast_tile(int64_t k, const T* A, int64_t ars, int64_t aks, const T* B, int64_t ldb, T* C, int64_t ldc) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v] = V(T(0));
  for (int64_t p = 0; p < k; ++p) {
    V b[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) b[v] = V::loadu(B + p * ldb + v * W);
    const T* a = A + p * aks;
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai(a[i * ars]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] = at::vec::fmadd(ai, b[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[i][v].store(C + i * ldc + v * W);
}

template <typename T>
using BroadcastTile = void (*)(int64_t, const T*, int64_t, int64_t, const T*, int64_t, T*, int64_t);

constexpr int kBroadcastMR = 6, kBroadcastNV = 2;

template <typename T, int... MR>
constexpr std::array<BroadcastTile<T>, sizeof...(MR)> broadcast_table(std::integer_sequence<int, MR...>) {
  return {&broadcast_tile<T, MR + 1, kBroadcastNV>...};
}

// C (m, n) = A (m, k) B (k, n) with A(i, p) at A[i * ars + p * aks] (so a
// transposed left operand is ars = 1, aks = its row stride), B and C row-major
// with unit column stride.
template <typename T>
void broadcast_product(int64_t m, int64_t n, int64_t k, const T* A, int64_t ars, int64_t aks, const T* B,
                       int64_t ldb, T* C, int64_t ldc) {
  static constexpr auto table = broadcast_table<T>(std::make_integer_sequence<int, kBroadcastMR>());
  constexpr int64_t P = kBroadcastNV * Vectorized<T>::size();  // panel width
  const int64_t panels = (n + P - 1) / P;
  const int64_t grain = std::max<int64_t>(1, kParallelWork / std::max<int64_t>(m * k * P, 1));
  at::parallel_for(0, panels, grain, [&](int64_t q0, int64_t q1) {
    std::vector<T> edge_b, edge_c;  // the right edge's panel, padded to P columns
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t j = q * P, width = std::min<int64_t>(P, n - j);
      const T* b = B + j;
      int64_t bstride = ldb;
      T* c = C + j;
      int64_t cstride = ldc;
      if (width < P) {
        edge_b.assign(static_cast<size_t>(std::max<int64_t>(k, 1) * P), T(0));
        for (int64_t p = 0; p < k; ++p) std::copy(B + p * ldb + j, B + p * ldb + j + width, edge_b.data() + p * P);
        edge_c.assign(static_cast<size_t>(kBroadcastMR * P), T(0));
        b = edge_b.data();
        bstride = P;
      }
      for (int64_t i = 0; i < m; i += kBroadcastMR) {
        const int64_t mr = std::min<int64_t>(kBroadcastMR, m - i);
        if (width == P) {
          table[mr - 1](k, A + i * ars, ars, aks, b, bstride, c + i * cstride, cstride);
        } else {
          table[mr - 1](k, A + i * ars, ars, aks, b, bstride, edge_c.data(), P);
          for (int64_t r = 0; r < mr; ++r)
            std::copy(edge_c.data() + r * P, edge_c.data() + r * P + width, C + (i + r) * ldc + j);
        }
      }
    }
  });
}

}  // namespace fastffnn::cpu::gemm
