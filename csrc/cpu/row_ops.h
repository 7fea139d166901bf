// The CPU's loops: the fused single-pass work that sits between the matrix
// products (bias + activation, bias + (log-)softmax, and their backward
// passes, each of which reads and writes a row exactly once while it is hot in
// L1), and the products fastffnn does itself: direct loops for one row, and
// register-blocked tiles for a small batch.
//
// Everything is vectorised with at::vec::Vectorized, and parallelised over
// rows. Column sums (the bias gradients) are formed per fixed chunk of rows and
// then added chunk by chunk in order; the chunking depends on the matrix shape
// only, never on the thread count, so results are bitwise reproducible
// whatever at::get_num_threads() says.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "../activation.h"

namespace fastffnn::cpu {

using at::vec::Vectorized;

// ------------------------------------------------------------ partial vectors
// The last, partial vector of a row: at::vec's loadu(p, count) and
// store(p, count) copy it through a stack buffer with memcpy, a library call
// each, which for rows of 10 logits was a quarter of the softmax and 4% of a
// batch-200 training step (perf, on the project's VM). With AVX2 or AVX-512,
// load_n and store_n are masked loads and stores instead: they touch only
// the first `count` lanes' memory, and load_n sets the other lanes to 0, as
// loadu(p, count) does.
#if defined(CPU_CAPABILITY_AVX2) && !defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
// The first `count` (0 to 8) 32-bit lanes set, or the first `count` (0 to 4) 64-bit lanes.
inline __m256i lane_mask32(int64_t count) {
  static constexpr int32_t kTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTable + 8 - count));
}
inline __m256i lane_mask64(int64_t count) {
  static constexpr int64_t kTable[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTable + 4 - count));
}
#endif

template <typename T>
inline Vectorized<T> load_n(const T* p, int64_t count) {
  if (count == Vectorized<T>::size()) return Vectorized<T>::loadu(p);
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p);
  } else if constexpr (std::is_same_v<T, double>) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p);
  }
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_maskload_ps(p, lane_mask32(count));
  } else if constexpr (std::is_same_v<T, double>) {
    return _mm256_maskload_pd(p, lane_mask64(count));
  }
#endif
  return Vectorized<T>::loadu(p, count);
}

template <typename T>
inline void store_n(const Vectorized<T>& v, T* p, int64_t count) {
  if (count == Vectorized<T>::size()) {
    v.store(p);
    return;
  }
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  if constexpr (std::is_same_v<T, float>) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v);
    return;
  } else if constexpr (std::is_same_v<T, double>) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v);
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  if constexpr (std::is_same_v<T, float>) {
    _mm256_maskstore_ps(p, lane_mask32(count), v);
    return;
  } else if constexpr (std::is_same_v<T, double>) {
    _mm256_maskstore_pd(p, lane_mask64(count), v);
    return;
  }
#endif
  v.store(p, count);
}

// ---------------------------------------------------------------- activations
// Each activation's derivative is written in terms of its output y = g(x), so
// the backward needs only the saved output, never the pre-activation.
template <Activation A>
struct Act;

// float32 tanh as x P(x^2) / Q(x^2), P and Q of degree 4, on x clamped to
// [-9, 9] (beyond which tanh rounds to +-1 in float32). ATen's tanh (Sleef's
// 1-ulp tanhf8) took about 70 cycles a vector of 8 on the project's VM, a
// fifth of a batch-200 training step at (64, 64, 10); this takes about a
// quarter of that. Its error against tanh in float64 is at most 3.5e-7
// relative (about 6 float32 ulps just below 1, fewer elsewhere): the
// coefficients are this project's weighted least-squares fit of the relative
// error over [0, 9], and the float32 evaluation, not the fit (2e-8), sets the
// error. tests/test_tanh_accuracy.py sweeps it. NaN stays NaN (minimum and
// maximum propagate it), +-inf gives +-1, and |result| <= 1, so the
// backward's 1 - y^2 is never negative. float64 keeps ATen's tanh: its
// references agree with scikit-learn's to 1e-14.
template <typename V>
inline V tanh_rational(const V& x) {
  using at::vec::fmadd;
  const V c = at::vec::minimum(at::vec::maximum(x, V(-9.f)), V(9.f));
  const V t = c * c;
  V p = fmadd(t, V(1.3419964695060571e-08f), V(2.0661364033003338e-05f));
  p = fmadd(p, t, V(0.003499002195894718f));
  p = fmadd(p, t, V(0.13383986055850983f));
  p = fmadd(p, t, V(1.f));
  V q = fmadd(t, V(7.804787287568615e-07f), V(0.0003291048342362046f));
  q = fmadd(q, t, V(0.025890229269862175f));
  q = fmadd(q, t, V(0.4671730697154999f));
  q = fmadd(q, t, V(1.f));
  return at::vec::minimum(at::vec::maximum(c * p / q, V(-1.f)), V(1.f));
}

template <>
struct Act<Activation::Tanh> {
  template <typename V>
  static V forward(const V& x) {
    if constexpr (std::is_same_v<V, Vectorized<float>>) {
      return tanh_rational(x);
    } else {
      return x.tanh();
    }
  }
  template <typename V>
  static V backward(const V& y, const V& dy) {
    return dy * (V(1) - y * y);
  }
};

template <>
struct Act<Activation::ReLU> {
  template <typename V>
  static V forward(const V& x) {
    return at::vec::maximum(x, V(0));  // NaN-propagating, as torch.relu
  }
  template <typename V>
  static V backward(const V& y, const V& dy) {
    // torch's threshold_backward: zero where y <= 0, dy elsewhere (NaN y too)
    return V::blendv(dy, V(0), y <= V(0));
  }
};

template <>
struct Act<Activation::Sigmoid> {
  template <typename V>
  static V forward(const V& x) {
    return V(1) / (V(1) + x.neg().exp());
  }
  template <typename V>
  static V backward(const V& y, const V& dy) {
    return dy * y * (V(1) - y);
  }
};

// Applies op(j, count) to elements [begin, end), a full vector at a time and
// then the remainder as one partial vector.
template <typename T, typename Op>
inline void for_each_vector(int64_t begin, int64_t end, const Op& op) {
  constexpr int64_t W = Vectorized<T>::size();
  int64_t j = begin;
  for (; j + W <= end; j += W) op(j, W);
  if (j < end) op(j, end - j);
}

// The same over a row of n elements.
template <typename T, typename Op>
inline void for_each_vector(int64_t n, const Op& op) {
  for_each_vector<T>(0, n, op);
}

// z[j] = g(z[j] + b[j]); b may be null.
template <Activation A, typename T>
inline void bias_act_row(T* z, const T* b, int64_t n) {
  using V = Vectorized<T>;
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    V x = load_n(z + j, c);
    if (b) x = x + load_n(b + j, c);
    store_n(Act<A>::forward(x), z + j, c);
  });
}

// dz[j] = dy[j] * g'(y[j]); dz may alias dy.
template <Activation A, typename T>
inline void act_backward_row(T* dz, const T* dy, const T* y, int64_t n) {
  using V = Vectorized<T>;
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    store_n(Act<A>::backward(load_n(y + j, c), load_n(dy + j, c)), dz + j, c);
  });
}

// ---------------------------------------------------------------- reductions
template <typename T>
inline T nan_max(T a, T b) {
  return (std::isnan(a) || a > b) ? a : b;
}

template <typename T>
inline T row_max(const T* z, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  T m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (n >= W) {
    V vm = V::loadu(z);
    for (j = W; j + W <= n; j += W) vm = at::vec::maximum(vm, V::loadu(z + j));
    T lanes[W];
    vm.store(lanes);
    for (int64_t k = 0; k < W; ++k) m = nan_max(m, lanes[k]);
  }
  for (; j < n; ++j) m = nan_max(m, z[j]);
  return m;
}

template <typename T>
inline T horizontal_sum(const Vectorized<T>& v) {
  constexpr int64_t W = Vectorized<T>::size();
  T lanes[W];
  v.store(lanes);
  T s = 0;
  for (int64_t k = 0; k < W; ++k) s += lanes[k];
  return s;
}

// ------------------------------------------------------------------- softmax
// z = softmax(z + b) (or log_softmax) in place; b may be null. The row max is
// subtracted before exponentiating so that logits of any magnitude stay
// finite, and log_softmax is formed as z - max - log(sum), never as log(p), so
// it never takes the log of an underflowed probability.
template <typename T>
inline void bias_softmax_row(T* z, const T* b, int64_t n, bool log) {
  using V = Vectorized<T>;
  if (b) {
    for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      store_n(load_n(z + j, c) + load_n(b + j, c), z + j, c);
    });
  }
  const T m = row_max(z, n);
  const V vm(m);
  V vsum(0);
  if (log) {
    for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V e = (load_n(z + j, c) - vm).exp();
      vsum = vsum + (c == V::size() ? e : V::set(V(0), e, c));
    });
    const V shift(m + std::log(horizontal_sum(vsum)));
    for_each_vector<T>(n, [&](int64_t j, int64_t c) { store_n(load_n(z + j, c) - shift, z + j, c); });
  } else {
    for_each_vector<T>(n, [&](int64_t j, int64_t c) {
      V e = (load_n(z + j, c) - vm).exp();
      store_n(e, z + j, c);
      vsum = vsum + (c == V::size() ? e : V::set(V(0), e, c));
    });
    const V inv(T(1) / horizontal_sum(vsum));
    for_each_vector<T>(n, [&](int64_t j, int64_t c) { store_n(load_n(z + j, c) * inv, z + j, c); });
  }
}

// A narrow row (fewer than two vectors: a classifier's 10 classes in float32)
// is a tail, or one vector and a tail, and each partial load or store of the
// tail goes through a buffer: bias_softmax_row took ~67 ns a row of 10 where
// torch's log_softmax took ~25-30. Rows side by side, a column of up to W rows
// in each vector, use only whole vectors. Each lane holds one row and does to
// it exactly what any other lane would (missing lanes repeat a row and are not
// stored), so a row's bits do not depend on the rows beside it or on the
// threads; they differ in the last bits from bias_softmax_row's (the sum runs
// along the row, and the log is the vector one).
template <typename T>
constexpr bool narrow_row(int64_t n) {
  return n < 2 * Vectorized<T>::size();
}

// z = softmax(z + b) (or log_softmax) in place for `count` <= W contiguous
// rows of n < 2W elements; as bias_softmax_row, row by row.
template <typename T>
inline void bias_softmax_rows_across(T* z, const T* b, int64_t count, int64_t n, bool log) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  V col[2 * W];
  alignas(64) T lanes[W];
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t k = 0; k < W; ++k) lanes[k] = z[(k < count ? k : 0) * n + j];
    col[j] = V::loadu(lanes);
    if (b) col[j] = col[j] + V(b[j]);
  }
  V m = col[0];
  for (int64_t j = 1; j < n; ++j) m = at::vec::maximum(m, col[j]);  // NaN propagates, as row_max's
  V sum(0);
  for (int64_t j = 0; j < n; ++j) {
    const V e = (col[j] - m).exp();
    sum = sum + e;
    if (!log) col[j] = e;
  }
  if (log) {
    const V shift = m + sum.log();
    for (int64_t j = 0; j < n; ++j) col[j] = col[j] - shift;
  } else {
    const V inv = V(T(1)) / sum;
    for (int64_t j = 0; j < n; ++j) col[j] = col[j] * inv;
  }
  for (int64_t j = 0; j < n; ++j) {
    col[j].store(lanes);
    for (int64_t k = 0; k < count; ++k) z[k * n + j] = lanes[k];
  }
}

// The gradient of the logits given the gradient of softmax's output:
//   softmax:      dz = p * (dp - <dp, p>)
//   log_softmax:  dz = dlp - exp(lp) * sum(dlp)
// dz may alias dout.
template <typename T>
inline void softmax_backward_row(T* dz, const T* dout, const T* out, int64_t n, bool log) {
  using V = Vectorized<T>;
  V vacc(0);
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    V d = load_n(dout + j, c);
    vacc = vacc + (log ? d : d * load_n(out + j, c));  // padded lanes load as 0
  });
  const V s(horizontal_sum(vacc));
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    V d = load_n(dout + j, c), y = load_n(out + j, c);
    store_n(log ? d - y.exp() * s : y * (d - s), dz + j, c);
  });
}

// -------------------------------------------------------------- the NLL loss
// log(sum(exp(z))), max-subtracted: the shift that turns logits into
// log-probabilities. A row of -inf gives -inf; a +inf logit gives NaN, as
// log_softmax (and so cross_entropy) does in PyTorch, where z - max is
// inf - inf: every log-probability, and the loss, of that row is NaN.
template <typename T>
inline T row_logsumexp(const T* z, int64_t n) {
  using V = Vectorized<T>;
  const T m = row_max(z, n);
  if (std::isinf(m)) return m > 0 ? std::numeric_limits<T>::quiet_NaN() : m;
  const V vm(m);
  V vsum(0);
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    V e = (load_n(z + j, c) - vm).exp();
    vsum = vsum + (c == V::size() ? e : V::set(V(0), e, c));
  });
  return m + std::log(horizontal_sum(vsum));
}

// -sum(y * log p) with log p = z - shift, for probabilities y. Written as
// sum(y * (shift - z)) so it never forms log of an underflowed p.
template <typename T>
inline T soft_nll_row(const T* z, T shift, const T* y, int64_t n) {
  using V = Vectorized<T>;
  const V vs(shift);
  V acc(0);
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    acc = acc + load_n(y + j, c) * (vs - load_n(z + j, c));  // padded lanes: y = 0
  });
  return horizontal_sum(acc);
}

// The logits' gradient of weight * soft_nll_row: weight * (sum(y) * p - y)
// with p = exp(z - shift); y == nullptr means the one-hot row of class t.
template <typename T>
inline void nll_backward_row(T* dz, const T* z, T shift, const T* y, int64_t t, T weight,
                             int64_t n) {
  using V = Vectorized<T>;
  T ysum = 1;
  if (y) {
    V acc(0);
    for_each_vector<T>(n, [&](int64_t j, int64_t c) { acc = acc + load_n(y + j, c); });
    ysum = horizontal_sum(acc);
  }
  const V vs(shift), vscale(weight * ysum), vw(weight);
  for_each_vector<T>(n, [&](int64_t j, int64_t c) {
    V g = (load_n(z + j, c) - vs).exp() * vscale;
    if (y) g = g - load_n(y + j, c) * vw;
    store_n(g, dz + j, c);
  });
  if (!y) dz[t] -= weight;
}

// ------------------------------------------------------ parallel row drivers
// How many elements a chunk of rows should hold at least before it is worth
// handing to another thread.
constexpr int64_t kMinChunkElems = 16384;
// The most chunks a column sum is split into; bounds its scratch memory.
constexpr int64_t kMaxChunks = 64;

inline int64_t rows_per_chunk(int64_t rows, int64_t cols) {
  const int64_t min_rows = std::max<int64_t>(1, kMinChunkElems / std::max<int64_t>(cols, 1));
  const int64_t chunks = std::clamp<int64_t>((rows + min_rows - 1) / min_rows, 1, kMaxChunks);
  return std::max<int64_t>(1, (rows + chunks - 1) / chunks);
}

// Runs row_fn(r) for every row r in parallel.
template <typename F>
inline void for_each_row(int64_t rows, int64_t cols, const F& row_fn) {
  at::parallel_for(0, rows, rows_per_chunk(rows, cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row_fn(r);
  });
}

// Runs row_fn(r) for every row r, which must fill row r of `m` (rows x cols,
// contiguous); then, if colsum is not null, writes the column sums of `m` to
// it, adding each row while it is still in cache. Deterministic: see the top
// of this file.
template <typename T, typename F>
inline void for_each_row_with_colsum(int64_t rows, int64_t cols, const T* m, T* colsum,
                                     const F& row_fn) {
  if (colsum == nullptr) {
    for_each_row(rows, cols, row_fn);
    return;
  }
  using V = Vectorized<T>;
  const int64_t chunk = rows_per_chunk(rows, cols);
  const int64_t chunks = rows == 0 ? 0 : (rows + chunk - 1) / chunk;
  auto add_rows = [&](int64_t r0, int64_t r1, T* acc) {
    for (int64_t r = r0; r < r1; ++r) {
      row_fn(r);
      const T* row = m + r * cols;
      for_each_vector<T>(cols, [&](int64_t j, int64_t c) {
        store_n(load_n(acc + j, c) + load_n(row + j, c), acc + j, c);
      });
    }
  };
  std::fill(colsum, colsum + cols, T(0));
  if (chunks <= 1) {
    add_rows(0, rows, colsum);
    return;
  }
  std::vector<T> partial(chunks * cols, T(0));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t k = c0; k < c1; ++k)
      add_rows(k * chunk, std::min(rows, (k + 1) * chunk), partial.data() + k * cols);
  });
  for (int64_t k = 0; k < chunks; ++k) {
    const T* p = partial.data() + k * cols;
    for_each_vector<T>(cols, [&](int64_t j, int64_t c) {
      store_n(load_n(colsum + j, c) + load_n(p + j, c), colsum + j, c);
    });
  }
}

// ------------------------------------------------------- one-row products
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
// The least work (multiply-adds or element updates) worth a second thread.
constexpr int64_t kOneRowParallelWork = 131072;

// The grain for at::parallel_for over `items` items of `per_item` work each:
// all of them on the calling thread below kOneRowParallelWork, else equal
// shares for as many threads as the work pays for (a share of at least
// kOneRowParallelWork / 2, so the split never costs more than it saves).
// Equal shares, not kOneRowParallelWork each, because the slowest thread sets
// the time: 784 x 256 split as 167 + 89 rows takes 167 rows' time, as 128 +
// 128 rows 128's.
inline int64_t one_row_grain(int64_t per_item, int64_t items) {
  const int64_t work = std::max<int64_t>(per_item, 1) * items;
  if (work < kOneRowParallelWork) return std::max<int64_t>(items, 1);
  const int64_t shares =
      std::min<int64_t>(at::get_num_threads(), std::max<int64_t>(2 * work / kOneRowParallelWork, 1));
  return std::max<int64_t>((items + shares - 1) / shares, 1);
}

// at::parallel_for, without its bookkeeping when the grain keeps the whole
// range on the calling thread (as one_row_grain does below
// kOneRowParallelWork): at::parallel_for then still costs about 150
// instructions (its guards and thread-local state), and a one-row step of a
// small network makes half a dozen such calls of a few hundred cycles each.
// f must not start parallel work of its own (nothing here does).
template <typename F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (end - begin <= grain) {
    if (begin < end) f(begin, end);
    return;
  }
  at::parallel_for(begin, end, grain, f);
}

// sum(a[i] * b[i]) over n elements, vectorised.
// Four running sums: with one, each add waits for the previous one (3-4
// cycles), which made the one-row products half as fast as reading the weights.
template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using V = Vectorized<T>;
  constexpr int64_t w = V::size();
  V acc0(0), acc1(0), acc2(0), acc3(0);
  int64_t i = 0;
  for (; i + 4 * w <= n; i += 4 * w) {
    acc0 = at::vec::fmadd(V::loadu(a + i), V::loadu(b + i), acc0);
    acc1 = at::vec::fmadd(V::loadu(a + i + w), V::loadu(b + i + w), acc1);
    acc2 = at::vec::fmadd(V::loadu(a + i + 2 * w), V::loadu(b + i + 2 * w), acc2);
    acc3 = at::vec::fmadd(V::loadu(a + i + 3 * w), V::loadu(b + i + 3 * w), acc3);
  }
  for (; i < n; i += w) {
    const int64_t count = std::min<int64_t>(w, n - i);
    acc0 = at::vec::fmadd(load_n(a + i, count), load_n(b + i, count), acc0);  // padded lanes load as 0
  }
  return horizontal_sum((acc0 + acc1) + (acc2 + acc3));
}

// y[j] = dot(w[j, :], x) for the rows of a contiguous (out, in) matrix w.
template <typename T>
inline void matvec(const T* w, const T* x, T* y, int64_t out, int64_t in) {
  parallel_for(0, out, one_row_grain(in, out), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) y[j] = dot(w + j * in, x, in);
  });
}

// y[i] += sum_j d[j] * w[j, i]: the input gradient W^T d, accumulated row by
// row of w so that w is read once, in order. The columns are split across
// threads, so each y[i] still sums its terms in the order j = 0, 1, ...
template <typename T>
inline void matvec_transposed_add(const T* w, const T* d, T* y, int64_t out, int64_t in) {
  using V = Vectorized<T>;
  parallel_for(0, in, one_row_grain(out, in), [&](int64_t i0, int64_t i1) {
    for (int64_t j = 0; j < out; ++j) {
      const V dj(d[j]);
      const T* row = w + j * in;
      for_each_vector<T>(i0, i1, [&](int64_t i, int64_t count) {
        store_n(load_n(y + i, count) + dj * load_n(row + i, count), y + i, count);
      });
    }
  });
}

// g = d x^T, the (out, in) weight gradient of one row.
template <typename T>
inline void outer(const T* d, const T* x, T* g, int64_t out, int64_t in) {
  using V = Vectorized<T>;
  parallel_for(0, out, one_row_grain(in, out), [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const V dj(d[j]);
      T* row = g + j * in;
      for_each_vector<T>(in, [&](int64_t i, int64_t count) { store_n(dj * load_n(x + i, count), row + i, count); });
    }
  });
}

}  // namespace fastffnn::cpu

// ------------------------------------------------------- small-batch products
// Register-blocked matrix products for the small matrices of one training
// step: a batch of tens of rows against weights of a few hundred columns.
//
// Why not at::mm: at these sizes MKL on the AMD CPUs this project runs on
// reaches about 45 GFLOP/s on two threads for (32, 300) x (300, 100), and
// about half that for its transposed-left product, the weight gradient dz^T x;
// it barely gains from the second thread. These tiles are 1.3-2.5x faster
// there (measured on the project's VM, 2026-11-28). The loops below keep a tile of the output
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
namespace fastffnn::cpu::gemm {

using at::vec::Vectorized;

// The least multiply-adds worth waking a second thread for, as for one row.
constexpr int64_t kParallelWork = kOneRowParallelWork;

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
  for (int j = 0; j < 4; ++j) c[j] = horizontal_sum(acc[j]);
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
    for (int i = 0; i < MR; ++i) a[i] = load_n(A + i * lda + p, c);
    for (int j = 0; j < NR; ++j) {
      const V b = load_n(B + j * ldb + p, c);
      for (int i = 0; i < MR; ++i) acc[i][j] = at::vec::fmadd(a[i], b, acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR == 4) {
      store_sums4(acc[i], C + i * ldc);
    } else {
      for (int j = 0; j < NR; ++j) C[i * ldc + j] = horizontal_sum(acc[i][j]);
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
