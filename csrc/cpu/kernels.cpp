// The CPU backend's kernels: the epilogues (csrc/epilogues.h), row-parallel
// loops over the vectorised row operations of row_ops.h; the one-row products
// (backend.h says when they apply); and the registration of every op's kernel
// (csrc/ops.h) with this backend for the CPU dispatch key.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "../checks.h"
#include "../epilogues.h"
#include "../ops.h"
#include "backend.h"
#include "row_ops.h"

namespace fastffnn::cpu {

namespace {

template <typename T>
const T* data_or_null(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

c10::optional<at::Tensor> contiguous(const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return c10::nullopt;
  return t->contiguous();
}

}  // namespace

void bias_act_(at::Tensor& z, const c10::optional<at::Tensor>& b, Activation act) {
  const auto bc = contiguous(b);
  const int64_t rows = z.size(0), n = z.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fastffnn.bias_act", [&] {
    scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* bp = data_or_null<scalar_t>(bc);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      for_each_row(rows, n, [&](int64_t r) { bias_act_row<A>(zp + r * n, bp, n); });
    });
  });
}

void bias_softmax_(at::Tensor& z, const c10::optional<at::Tensor>& b, bool log) {
  const auto bc = contiguous(b);
  const int64_t rows = z.size(0), n = z.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fastffnn.bias_softmax", [&] {
    scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* bp = data_or_null<scalar_t>(bc);
    if (narrow_row<scalar_t>(n)) {
      constexpr int64_t W = at::vec::Vectorized<scalar_t>::size();
      for_each_row((rows + W - 1) / W, n * W, [&](int64_t g) {
        bias_softmax_rows_across(zp + g * W * n, bp, std::min(W, rows - g * W), n, log);
      });
    } else {
      for_each_row(rows, n, [&](int64_t r) { bias_softmax_row(zp + r * n, bp, n, log); });
    }
  });
}

void act_backward(const at::Tensor& dy, const at::Tensor& y, Activation act, at::Tensor& dz,
                  at::Tensor* grad_bias) {
  const int64_t rows = y.size(0), n = y.size(1);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fastffnn.act_backward", [&] {
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    scalar_t* gbp = grad_bias ? grad_bias->data_ptr<scalar_t>() : nullptr;
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      for_each_row_with_colsum(rows, n, dzp, gbp, [&](int64_t r) {
        act_backward_row<A>(dzp + r * n, dyp + r * n, yp + r * n, n);
      });
    });
  });
}

void softmax_backward(const at::Tensor& dout, const at::Tensor& y, bool log, at::Tensor& dz,
                      at::Tensor* grad_bias) {
  const int64_t rows = y.size(0), n = y.size(1);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "fastffnn.softmax_backward", [&] {
    const scalar_t* dp = dout.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    scalar_t* gbp = grad_bias ? grad_bias->data_ptr<scalar_t>() : nullptr;
    for_each_row_with_colsum(rows, n, dzp, gbp, [&](int64_t r) {
      softmax_backward_row(dzp + r * n, dp + r * n, yp + r * n, n, log);
    });
  });
}

at::Tensor nll_rows(const char* op, const at::Tensor& z, const at::Tensor& target, bool is_index,
                    at::Tensor* lse) {
  const int64_t rows = z.size(0), n = z.size(1);
  if (is_index) {
    // Range-check every class index before any loop reads memory with it.
    const int64_t* t = target.const_data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) check_class_index(op, t[r], n);
  }
  auto loss = at::empty({rows}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fastffnn.nll", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* lp = loss.data_ptr<scalar_t>();
    scalar_t* sp = lse ? lse->data_ptr<scalar_t>() : nullptr;
    const int64_t* tp = is_index ? target.const_data_ptr<int64_t>() : nullptr;
    const scalar_t* yp = is_index ? nullptr : target.const_data_ptr<scalar_t>();
    for_each_row(rows, n, [&](int64_t r) {
      const scalar_t* zr = zp + r * n;
      const scalar_t shift = sp ? (sp[r] = row_logsumexp(zr, n)) : scalar_t(0);
      lp[r] = tp ? shift - zr[tp[r]] : soft_nll_row(zr, shift, yp + r * n, n);
    });
  });
  return loss;
}

at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction) {
  auto out = at::empty({}, row_loss.options());
  AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "fastffnn.reduce_loss", [&] {
    const scalar_t* p = row_loss.const_data_ptr<scalar_t>();
    const int64_t rows = row_loss.numel();
    double total = 0;
    for (int64_t r = 0; r < rows; ++r) total += p[r];
    // The mean of no rows is NaN, as in torch.nn.functional.cross_entropy.
    if (reduction == Reduction::Mean) total /= static_cast<double>(rows);
    *out.data_ptr<scalar_t>() = static_cast<scalar_t>(total);
  });
  return out;
}

at::Tensor nll_backward(const at::Tensor& grad_loss, const at::Tensor& z,
                        const c10::optional<at::Tensor>& shift, const at::Tensor& target,
                        bool is_index, Reduction reduction, at::Tensor* grad_bias,
                        at::Tensor* grad_target) {
  const int64_t rows = z.size(0), n = z.size(1);
  auto dz = at::empty({rows, n}, z.options());
  const auto g = grad_loss.contiguous();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fastffnn.nll_backward", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* sp = data_or_null<scalar_t>(shift);
    const int64_t* tp = is_index ? target.const_data_ptr<int64_t>() : nullptr;
    const scalar_t* yp = is_index ? nullptr : target.const_data_ptr<scalar_t>();
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    scalar_t* dzp = dz.data_ptr<scalar_t>();
    scalar_t* gtp = grad_target ? grad_target->data_ptr<scalar_t>() : nullptr;
    const scalar_t mean_scale = reduction == Reduction::Mean ? scalar_t(1) / scalar_t(rows) : 1;
    for_each_row_with_colsum(rows, n, dzp, grad_bias ? grad_bias->data_ptr<scalar_t>() : nullptr,
                             [&](int64_t r) {
      const scalar_t w = reduction == Reduction::None ? gp[r] : gp[0] * mean_scale;
      const scalar_t s = sp ? sp[r] : scalar_t(0);
      const scalar_t* zr = zp + r * n;
      nll_backward_row(dzp + r * n, zr, s, yp ? yp + r * n : nullptr, tp ? tp[r] : 0, w, n);
      if (gtp) {
        for (int64_t j = 0; j < n; ++j) gtp[r * n + j] = w * (s - zr[j]);
      }
    });
  });
  return dz;
}

// ------------------------------------------------------- one-row products
bool one_row_applies(const at::Tensor& x) { return x.device().is_cpu() && x.dim() == 2 && x.size(0) == 1; }

bool one_row_applies(const at::Tensor& x, const at::Tensor& w) { return one_row_applies(x) && w.is_contiguous(); }

at::Tensor linear_one_row(const at::Tensor& x, const at::Tensor& w) {
  const at::Tensor xc = x.contiguous();
  auto z = at::empty({1, w.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastffnn.linear_one_row", [&] {
    matvec(w.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), w.size(0),
           w.size(1));
  });
  return z;
}

at::Tensor input_grad_one_row(const at::Tensor& dz, const at::Tensor& w) {
  const at::Tensor dc = dz.contiguous();
  auto gx = at::zeros({1, w.size(1)}, dz.options());
  AT_DISPATCH_FLOATING_TYPES(dz.scalar_type(), "fastffnn.input_grad_one_row", [&] {
    matvec_transposed_add(w.const_data_ptr<scalar_t>(), dc.const_data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
                          w.size(0), w.size(1));
  });
  return gx;
}

at::Tensor weight_grad_one_row(const at::Tensor& dz, const at::Tensor& x) {
  const at::Tensor dc = dz.contiguous(), xc = x.contiguous();
  auto gw = at::empty({dz.size(1), x.size(1)}, dz.options());
  AT_DISPATCH_FLOATING_TYPES(dz.scalar_type(), "fastffnn.weight_grad_one_row", [&] {
    outer(dc.const_data_ptr<scalar_t>(), xc.const_data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(), dz.size(1),
          x.size(1));
  });
  return gw;
}

// ---------------------------------------------------- small-batch products
namespace {
bool unit_column_stride(const at::Tensor& t) { return t.size(1) <= 1 || t.stride(1) == 1; }
// Whether a product of a layer with `out` outputs and `in` inputs over the
// rows of `rows` takes the small loops (backend.h says when).
bool small_product(const at::Tensor& rows, int64_t out, int64_t in) {
  if (!(rows.device().is_cpu() && rows.dim() == 2 &&
        (rows.scalar_type() == at::kFloat || rows.scalar_type() == at::kDouble)))
    return false;
  const int64_t m = rows.size(0);
  return m <= kSmallBatch || (out <= kNarrowOut && m * out * in <= kNarrowWork);
}
// The row stride of a matrix with unit column stride; any value serves for a
// matrix of one row.
int64_t row_stride(const at::Tensor& t) { return t.size(0) <= 1 ? t.size(1) : t.stride(0); }
}  // namespace

bool small_linear_applies(const at::Tensor& x, const at::Tensor& w) {
  return small_product(x, w.size(0), x.size(-1)) && unit_column_stride(x) && unit_column_stride(w);
}
bool small_input_grad_applies(const at::Tensor& dz, const at::Tensor& w) {
  return small_product(dz, dz.size(-1), w.size(-1)) && unit_column_stride(w);
}
bool small_weight_grad_applies(const at::Tensor& dz, const at::Tensor& x) {
  return small_product(dz, dz.size(-1), x.size(-1)) && unit_column_stride(x);
}

at::Tensor linear_small(const at::Tensor& x, const at::Tensor& w) {
  auto z = at::empty({x.size(0), w.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastffnn.linear_small", [&] {
    gemm::nt(x.size(0), w.size(0), x.size(1), x.const_data_ptr<scalar_t>(), row_stride(x),
             w.const_data_ptr<scalar_t>(), row_stride(w), z.data_ptr<scalar_t>(), z.size(1));
  });
  return z;
}

at::Tensor input_grad_small(const at::Tensor& dz, const at::Tensor& w) {
  auto gx = at::empty({dz.size(0), w.size(1)}, dz.options());
  AT_DISPATCH_FLOATING_TYPES(dz.scalar_type(), "fastffnn.input_grad_small", [&] {
    gemm::broadcast_product(dz.size(0), w.size(1), dz.size(1), dz.const_data_ptr<scalar_t>(), dz.stride(0),
                            dz.stride(1), w.const_data_ptr<scalar_t>(), row_stride(w), gx.data_ptr<scalar_t>(),
                            gx.size(1));
  });
  return gx;
}

at::Tensor weight_grad_small(const at::Tensor& dz, const at::Tensor& x) {
  auto gw = at::empty({dz.size(1), x.size(1)}, dz.options());
  AT_DISPATCH_FLOATING_TYPES(dz.scalar_type(), "fastffnn.weight_grad_small", [&] {
    gemm::broadcast_product(dz.size(1), x.size(1), dz.size(0), dz.const_data_ptr<scalar_t>(), dz.stride(1),
                            dz.stride(0), x.const_data_ptr<scalar_t>(), row_stride(x), gw.data_ptr<scalar_t>(),
                            gw.size(1));
  });
  return gw;
}

std::pair<at::Tensor, std::vector<at::Tensor>> network_forward_one_row(const at::Tensor& x, const Network& net,
                                                                       bool log) {
  const at::Tensor xc = x.contiguous();
  const size_t depth = net.depth();
  std::vector<at::Tensor> hidden;
  auto p = at::empty({1, net.weights.back().size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastffnn.network_forward_one_row", [&] {
    using T = scalar_t;
    const T* a = xc.const_data_ptr<T>();
    for (size_t k = 0; k < depth; ++k) {
      const at::Tensor& w = net.weights[k];
      const bool last = k + 1 == depth;
      at::Tensor out = last ? p : at::empty({1, w.size(0)}, x.options());
      T* op = out.data_ptr<T>();
      const c10::optional<at::Tensor> b = net.bias(k);
      const at::Tensor bc = b.has_value() ? b->contiguous() : at::Tensor();
      const T* bp = bc.defined() ? bc.const_data_ptr<T>() : nullptr;
      matvec(w.const_data_ptr<T>(), a, op, w.size(0), w.size(1));
      if (last) {
        bias_softmax_row(op, bp, w.size(0), log);
      } else {
        dispatch_activation(net.acts[k], [&](auto tag) { bias_act_row<decltype(tag)::value>(op, bp, w.size(0)); });
        hidden.push_back(out);
      }
      a = op;
    }
  });
  return {p, std::move(hidden)};
}

}  // namespace fastffnn::cpu

// The emulated build (csrc/cuda/emulation/) registers the CUDA backend for
// CPU tensors instead, so that its kernels run on the CPU.
#ifndef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) { fastffnn::ops::register_kernels<fastffnn::cpu::Backend>(m); }
#endif
