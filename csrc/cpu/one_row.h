// Matrix products with a single row, as direct loops.
//
// The lecture trains on one example at a time, so every product in its step
// has one row: y = W x (a matrix-vector product), x' = W^T d and the outer
// product d x^T of the weight gradient. at::mm hands these to MKL, which on
// the AMD CPUs this project runs on is slow for one row, and each call costs
// microseconds of dispatch on top; at these sizes the loops below take about
// as long as the memory traffic of reading W once.
//
// Threads: waking a second thread costs more than a product below ~128k
// multiply-adds, so smaller products run on the calling thread. Each output
// element is formed by one thread in a fixed order, so the results do not
// depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "row_ops.h"

namespace fastffnn::cpu {

// The least work (multiply-adds or element updates) worth a second thread.
constexpr int64_t kOneRowParallelWork = 131072;

// Items of `per_item` work each that one thread should take at least.
inline int64_t one_row_grain(int64_t per_item) {
  return std::max<int64_t>(1, kOneRowParallelWork / std::max<int64_t>(per_item, 1));
}

// sum(a[i] * b[i]) over n elements, vectorised.
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  V acc(0);
  for_each_vector<T>(n, [&](int64_t i, int64_t count) {
    acc = acc + V::loadu(a + i, count) * V::loadu(b + i, count);  // padded lanes load as 0
  });
  return horizontal_sum(acc);
}

// y[j] = dot(w[j, :], x) for the rows of a contiguous (out, in) matrix w.
template <typename T>
inline void matvec(const T* w, const T* x, T* y, int64_t out, int64_t in) {
  at::parallel_for(0, out, one_row_grain(in), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) y[j] = dot(w + j * in, x, in);
  });
}

// y[i] += sum_j d[j] * w[j, i]: the input gradient W^T d, accumulated row by
// row of w so that w is read once, in order. The columns are split across
// threads, so each y[i] still sums its terms in the order j = 0, 1, ...
template <typename T>
inline void matvec_transposed_add(const T* w, const T* d, T* y, int64_t out, int64_t in) {
  using V = Vectorized<T>;
  at::parallel_for(0, in, one_row_grain(out), [&](int64_t i0, int64_t i1) {
    for (int64_t j = 0; j < out; ++j) {
      const V dj(d[j]);
      const T* row = w + j * in;
      for_each_vector<T>(i0, i1, [&](int64_t i, int64_t count) {
        (V::loadu(y + i, count) + dj * V::loadu(row + i, count)).store(y + i, count);
      });
    }
  });
}

// g = d x^T, the (out, in) weight gradient of one row.
template <typename T>
inline void outer(const T* d, const T* x, T* g, int64_t out, int64_t in) {
  using V = Vectorized<T>;
  at::parallel_for(0, out, one_row_grain(in), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const V dj(d[j]);
      T* row = g + j * in;
      for_each_vector<T>(in, [&](int64_t i, int64_t count) { (dj * V::loadu(x + i, count)).store(row + i, count); });
    }
  });
}

}  // namespace fastffnn::cpu
