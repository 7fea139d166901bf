// The CUDA epilogues (csrc/epilogues.h): the single-pass kernels that sit
// between the cuBLAS matrix products of the general tier.
//
// * bias + activation: a 2-D grid over (columns, rows), coalesced along the
//   row, the bias loaded once per thread.
// * softmax, its backward and the NLL rows: one warp per row, three passes
//   over the row (max, sum, write), which stays in L1 for any class count a
//   classifier has.
// * column sums (bias gradients): each block owns 32 columns and one fixed
//   chunk of rows; its 8 row-threads accumulate, reduce through shared memory
//   in a fixed order, and write one partial per chunk; a second kernel adds
//   the partials in chunk order. No atomics, so the bits are reproducible,
//   and the chunking depends on the shape only.
//
// Everything is computed in acc_t (float, or double for float64) and every
// launch goes to the current stream and is checked. No kernel synchronises
// the host or allocates outside the caching allocator, so all are
// CUDA-graph capturable.
#include <ATen/Dispatch.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>

#include <algorithm>
#include <limits>

#include "../checks.h"
#include "../epilogues.h"
#include "common.cuh"
#include "indices_checked.h"

namespace fastffnn::cuda {

namespace {
thread_local bool t_indices_checked = false;
}  // namespace

IndicesChecked::IndicesChecked() : previous_(t_indices_checked) { t_indices_checked = true; }
IndicesChecked::~IndicesChecked() { t_indices_checked = previous_; }
bool IndicesChecked::active() { return t_indices_checked; }

namespace {

constexpr int kRowsPerBlock = 4;  // warps per block in the row kernels
constexpr int kColTile = 32;      // columns per block of the column-sum kernel
constexpr int kRowThreads = 8;    // row-threads per block of the column-sum kernel

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

at::ScalarType acc_type(at::ScalarType t) { return at::toOpMathType(t); }

// ------------------------------------------------------- bias + activation
template <typename T, Activation A>
__global__ void bias_act_kernel(T* __restrict__ z, const T* __restrict__ b, int64_t rows, int64_t n) {
  using Acc = acc_t<T>;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= n) return;
  const Acc bias = b ? static_cast<Acc>(b[col]) : Acc(0);
  for (int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.y + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.y) * blockDim.y) {
    T* p = z + r * n + col;
    *p = static_cast<T>(Act<A>::forward(static_cast<Acc>(*p) + bias));
  }
}

// ------------------------------------------------------------ row kernels
// A warp per row; row_grid caps the grid at the device's limit, so each warp
// takes rows row, row + gridDim.x * kRowsPerBlock, ... (the whole warp
// together: the loop's bound is the same for its lanes).
#define FASTFFNN_FOR_EACH_WARP_ROW(row, rows)                                                     \
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y; row < (rows); \
       row += static_cast<int64_t>(gridDim.x) * kRowsPerBlock)

template <typename T>
__global__ void bias_softmax_kernel(T* __restrict__ z, const T* __restrict__ b, int64_t rows, int64_t n,
                                    bool log) {
  using Acc = acc_t<T>;
  FASTFFNN_FOR_EACH_WARP_ROW(row, rows) {
    const int lane = threadIdx.x;
    T* zr = z + row * n;
    auto logit = [&](int64_t j) { return static_cast<Acc>(zr[j]) + (b ? static_cast<Acc>(b[j]) : Acc(0)); };
    Acc m = -std::numeric_limits<Acc>::infinity();
    for (int64_t j = lane; j < n; j += 32) m = nan_max(m, logit(j));
    m = warp_max(m);
    Acc s = 0;
    for (int64_t j = lane; j < n; j += 32) s += dev_exp(logit(j) - m);
    s = warp_sum(s);
    if (log) {
      const Acc shift = m + dev_log(s);  // log_softmax = z - max - log(sum): never log(p)
      for (int64_t j = lane; j < n; j += 32) zr[j] = static_cast<T>(logit(j) - shift);
    } else {
      const Acc inv = Acc(1) / s;
      for (int64_t j = lane; j < n; j += 32) zr[j] = static_cast<T>(dev_exp(logit(j) - m) * inv);
    }
  }
}

template <typename T>
__global__ void softmax_backward_kernel(T* __restrict__ dz, const T* __restrict__ dout, const T* __restrict__ y,
                                        int64_t rows, int64_t n, bool log) {
  using Acc = acc_t<T>;
  FASTFFNN_FOR_EACH_WARP_ROW(row, rows) {
    const int lane = threadIdx.x;
    const int64_t base = row * n;
    Acc s = 0;
    for (int64_t j = lane; j < n; j += 32) {
      const Acc d = static_cast<Acc>(dout[base + j]);
      s += log ? d : d * static_cast<Acc>(y[base + j]);
    }
    s = warp_sum(s);
    for (int64_t j = lane; j < n; j += 32) {
      const Acc d = static_cast<Acc>(dout[base + j]), yj = static_cast<Acc>(y[base + j]);
      dz[base + j] = static_cast<T>(log ? d - dev_exp(yj) * s : yj * (d - s));
    }
  }
}

// Per-row cross-entropy of log p = z - shift. With lse given, shift is the
// row's log-sum-exp, written there in acc_t; otherwise z already holds
// log-probabilities. A class index outside [0, n) (only possible under graph
// capture, where the host-side range check cannot run) gives NaN, never an
// out-of-bounds read (and its gradient, nll_backward_kernel's, NaN too).
template <typename T>
__global__ void nll_rows_kernel(const T* __restrict__ z, const int64_t* __restrict__ index, const T* __restrict__ probs,
                                acc_t<T>* __restrict__ lse, acc_t<T>* __restrict__ loss, int64_t rows, int64_t n) {
  using Acc = acc_t<T>;
  FASTFFNN_FOR_EACH_WARP_ROW(row, rows) {
    const int lane = threadIdx.x;
    const T* zr = z + row * n;
    Acc shift = 0;
    if (lse) {
      Acc m = -std::numeric_limits<Acc>::infinity();
      for (int64_t j = lane; j < n; j += 32) m = nan_max(m, static_cast<Acc>(zr[j]));
      m = warp_max(m);
      Acc s = 0;
      for (int64_t j = lane; j < n; j += 32) s += dev_exp(static_cast<Acc>(zr[j]) - m);
      s = warp_sum(s);
      // a row of -inf: -inf; a +inf logit: NaN, as PyTorch's log_softmax (inf - inf)
      shift = dev_isinf(m) ? (m > 0 ? Acc(NAN) : m) : m + dev_log(s);
      if (lane == 0) lse[row] = shift;
    }
    Acc l;
    if (index) {
      const int64_t t = index[row];
      l = (t >= 0 && t < n) ? shift - static_cast<Acc>(zr[t]) : std::numeric_limits<Acc>::quiet_NaN();
    } else {
      const T* yr = probs + row * n;
      l = 0;
      for (int64_t j = lane; j < n; j += 32) l += static_cast<Acc>(yr[j]) * (shift - static_cast<Acc>(zr[j]));
      l = warp_sum(l);
    }
    if (lane == 0) loss[row] = l;
  }
}

template <typename T>
__global__ void nll_backward_kernel(T* __restrict__ dz, T* __restrict__ grad_target, const T* __restrict__ z,
                                    const acc_t<T>* __restrict__ shift, const int64_t* __restrict__ index,
                                    const T* __restrict__ probs, const T* __restrict__ grad_loss,
                                    bool per_row_grad, acc_t<T> scale, int64_t rows, int64_t n) {
  using Acc = acc_t<T>;
  FASTFFNN_FOR_EACH_WARP_ROW(row, rows) {
    const int lane = threadIdx.x;
    const int64_t base = row * n;
    const Acc w = static_cast<Acc>(grad_loss[per_row_grad ? row : 0]) * scale;
    const Acc s = shift ? shift[row] : Acc(0);
    Acc ysum = 1;
    const int64_t t = index ? index[row] : -1;
    // a class index outside [0, n) (only under graph capture, as in nll_rows_kernel) gives NaN gradients, so that
    // the update makes the damage visible instead of training on a row of zeros
    const Acc bad = index && (t < 0 || t >= n) ? std::numeric_limits<Acc>::quiet_NaN() : Acc(0);
    if (!index) {
      ysum = 0;
      for (int64_t j = lane; j < n; j += 32) ysum += static_cast<Acc>(probs[base + j]);
      ysum = warp_sum(ysum);
    }
    for (int64_t j = lane; j < n; j += 32) {
      const Acc zj = static_cast<Acc>(z[base + j]);
      const Acc yj = index ? Acc(j == t ? 1 : 0) : static_cast<Acc>(probs[base + j]);
      dz[base + j] = static_cast<T>(w * (ysum * dev_exp(zj - s) - yj) + bad);
      if (grad_target) grad_target[base + j] = static_cast<T>(w * (s - zj));
    }
  }
}

// ------------------------------------------------------------ column sums
// Rows per chunk of a column sum: a function of the row count only.
int64_t colsum_chunk_rows(int64_t rows) { return std::max<int64_t>(64, ceil_div(rows, 128)); }

// Calls op(r, c) for every element, which may write it and returns its
// contribution to column c's sum; with partial not null, writes each chunk's
// column sums there.
template <typename Acc, typename Op>
__global__ void rows_with_colsum_kernel(int64_t rows, int64_t n, int64_t chunk_rows, Op op, Acc* partial) {
  FASTFFNN_STATIC_SHARED(Acc, tile, [kRowThreads][kColTile + 1]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  Acc acc = 0;
  if (col < n) {
    for (int64_t r = r0 + ty; r < r1; r += kRowThreads) acc += op(r, col);
  }
  if (partial == nullptr) return;  // the same for the whole block
  tile[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && col < n) {
    Acc s = 0;
#pragma unroll
    for (int k = 0; k < kRowThreads; ++k) s += tile[k][tx];
    partial[static_cast<int64_t>(blockIdx.y) * n + col] = s;
  }
}

template <typename T, Activation A>
struct ActBackwardOp {
  const T* dy;
  const T* y;
  T* dz;
  int64_t n;
  __device__ acc_t<T> operator()(int64_t r, int64_t c) const {
    using Acc = acc_t<T>;
    const int64_t i = r * n + c;
    const Acc v = Act<A>::backward(static_cast<Acc>(y[i]), static_cast<Acc>(dy[i]));
    dz[i] = static_cast<T>(v);
    return v;
  }
};

template <typename T>
struct ReadOp {
  const T* m;
  int64_t n;
  __device__ acc_t<T> operator()(int64_t r, int64_t c) const { return static_cast<acc_t<T>>(m[r * n + c]); }
};

// Runs op over a (rows, n) matrix and, if colsum is given, writes its column sums there.
template <typename T, typename Op>
void launch_rows_with_colsum(int64_t rows, int64_t n, const Op& op, at::Tensor* colsum,
                             const at::TensorOptions& options) {
  using Acc = acc_t<T>;
  if (n == 0) return;
  if (rows == 0) {
    if (colsum) colsum->zero_();
    return;
  }
  const int64_t chunk_rows = colsum_chunk_rows(rows);
  const int64_t chunks = ceil_div(rows, chunk_rows);
  at::Tensor partial;
  if (colsum) partial = at::empty({chunks, n}, options.dtype(acc_type(options.dtype().toScalarType())));
  const dim3 block(kColTile, kRowThreads);
  const dim3 grid(static_cast<unsigned>(ceil_div(n, kColTile)), static_cast<unsigned>(chunks));
  launch("rows_with_colsum_kernel", rows_with_colsum_kernel<Acc, Op>, grid, block, 0, rows, n, chunk_rows, op,
         colsum ? partial.data_ptr<Acc>() : nullptr);
  if (colsum) {
    launch("finish_colsum_kernel", finish_colsum_kernel<T, Acc>, dim3(static_cast<unsigned>(ceil_div(n, 256))),
           dim3(256), 0, partial.const_data_ptr<Acc>(), chunks, n, colsum->data_ptr<T>());
  }
}

dim3 row_grid(int64_t rows) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, kRowsPerBlock), current_device_info().max_grid_x)));
}
const dim3 kRowBlock(32, kRowsPerBlock);

#define FASTFFNN_DISPATCH_CUDA_FLOATING(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, type, name, __VA_ARGS__)

}  // namespace

void bias_act_(at::Tensor& z, const c10::optional<at::Tensor>& b, Activation act) {
  const int64_t rows = z.size(0), n = z.size(1);
  if (rows == 0 || n == 0) return;
  const auto bc = b.has_value() ? c10::optional<at::Tensor>(b->contiguous()) : c10::nullopt;
  // Up to 256 threads along the row (a warp at least), the rest over rows.
  const int64_t tx = std::min<int64_t>(256, std::max<int64_t>(32, ceil_div(n, 32) * 32));
  const dim3 block(static_cast<unsigned>(tx), static_cast<unsigned>(256 / tx));
  const dim3 grid(static_cast<unsigned>(ceil_div(n, tx)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, block.y), kMaxGridYZ)));
  FASTFFNN_DISPATCH_CUDA_FLOATING(z.scalar_type(), "fastffnn.bias_act", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      launch("bias_act_kernel", bias_act_kernel<scalar_t, A>, grid, block, 0, z.data_ptr<scalar_t>(),
             data_or_null<scalar_t>(bc), rows, n);
    });
  });
}

void bias_softmax_(at::Tensor& z, const c10::optional<at::Tensor>& b, bool log) {
  const int64_t rows = z.size(0), n = z.size(1);
  if (rows == 0 || n == 0) return;
  const auto bc = b.has_value() ? c10::optional<at::Tensor>(b->contiguous()) : c10::nullopt;
  FASTFFNN_DISPATCH_CUDA_FLOATING(z.scalar_type(), "fastffnn.bias_softmax", [&] {
    launch("bias_softmax_kernel", bias_softmax_kernel<scalar_t>, row_grid(rows), kRowBlock, 0,
           z.data_ptr<scalar_t>(), data_or_null<scalar_t>(bc), rows, n, log);
  });
}

void act_backward(const at::Tensor& dy, const at::Tensor& y, Activation act, at::Tensor& dz,
                  at::Tensor* grad_bias) {
  const int64_t rows = y.size(0), n = y.size(1);
  FASTFFNN_DISPATCH_CUDA_FLOATING(y.scalar_type(), "fastffnn.act_backward", [&] {
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      ActBackwardOp<scalar_t, A> op{dy.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                                    dz.data_ptr<scalar_t>(), n};
      launch_rows_with_colsum<scalar_t>(rows, n, op, grad_bias, y.options());
    });
  });
}

void softmax_backward(const at::Tensor& dout, const at::Tensor& y, bool log, at::Tensor& dz,
                      at::Tensor* grad_bias) {
  const int64_t rows = y.size(0), n = y.size(1);
  FASTFFNN_DISPATCH_CUDA_FLOATING(y.scalar_type(), "fastffnn.softmax_backward", [&] {
    if (rows != 0 && n != 0) {
      launch("softmax_backward_kernel", softmax_backward_kernel<scalar_t>, row_grid(rows), kRowBlock, 0,
             dz.data_ptr<scalar_t>(), dout.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), rows, n, log);
    }
    if (grad_bias) {
      launch_rows_with_colsum<scalar_t>(rows, n, ReadOp<scalar_t>{dz.const_data_ptr<scalar_t>(), n}, grad_bias,
                                        y.options());
    }
  });
}

at::Tensor nll_rows(const char* op, const at::Tensor& z, const at::Tensor& target, bool is_index,
                    at::Tensor* lse) {
  const int64_t rows = z.size(0), n = z.size(1);
  if (is_index && rows > 0 && !IndicesChecked::active() &&
      c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None) {
    // The range check reads two numbers back, which a CUDA graph cannot
    // record; under capture the kernel turns a bad index into a NaN loss.
    // A fit call has checked every label before its first step.
    const auto [lo, hi] = at::aminmax(target);
    check_class_index(op, lo.item<int64_t>(), n);
    check_class_index(op, hi.item<int64_t>(), n);
  }
  auto loss = at::empty({rows}, z.options().dtype(acc_type(z.scalar_type())));
  if (rows == 0) return loss;
  FASTFFNN_DISPATCH_CUDA_FLOATING(z.scalar_type(), "fastffnn.nll", [&] {
    using Acc = acc_t<scalar_t>;
    launch("nll_rows_kernel", nll_rows_kernel<scalar_t>, row_grid(rows), kRowBlock, 0, z.const_data_ptr<scalar_t>(),
           is_index ? target.const_data_ptr<int64_t>() : nullptr,
           is_index ? nullptr : target.const_data_ptr<scalar_t>(), lse ? lse->data_ptr<Acc>() : nullptr,
           loss.data_ptr<Acc>(), rows, n);
  });
  return loss;
}

at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction) {
  // A fixed-shape tree reduction: deterministic, and capturable.
  auto total = at::sum(row_loss, at::kDouble);
  if (reduction == Reduction::Mean) total = at::div(total, static_cast<double>(row_loss.numel()));
  return total;
}

at::Tensor nll_backward(const at::Tensor& grad_loss, const at::Tensor& z,
                        const c10::optional<at::Tensor>& shift, const at::Tensor& target,
                        bool is_index, Reduction reduction, at::Tensor* grad_bias,
                        at::Tensor* grad_target) {
  const int64_t rows = z.size(0), n = z.size(1);
  auto dz = at::empty({rows, n}, z.options());
  const auto g = grad_loss.contiguous();
  FASTFFNN_DISPATCH_CUDA_FLOATING(z.scalar_type(), "fastffnn.nll_backward", [&] {
    using Acc = acc_t<scalar_t>;
    if (rows != 0 && n != 0) {
      const Acc scale = reduction == Reduction::Mean ? Acc(1) / Acc(rows) : Acc(1);
      launch("nll_backward_kernel", nll_backward_kernel<scalar_t>, row_grid(rows), kRowBlock, 0,
             dz.data_ptr<scalar_t>(), grad_target ? grad_target->data_ptr<scalar_t>() : nullptr,
             z.const_data_ptr<scalar_t>(), shift ? shift->const_data_ptr<Acc>() : nullptr,
             is_index ? target.const_data_ptr<int64_t>() : nullptr,
             is_index ? nullptr : target.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(),
             reduction == Reduction::None, scale, rows, n);
    }
    if (grad_bias) {
      launch_rows_with_colsum<scalar_t>(rows, n, ReadOp<scalar_t>{dz.const_data_ptr<scalar_t>(), n}, grad_bias,
                                        z.options());
    }
  });
  return dz;
}

}  // namespace fastffnn::cuda
