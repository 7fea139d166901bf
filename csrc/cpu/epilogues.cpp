// The CPU epilogues (csrc/epilogues.h): row-parallel loops over the
// vectorised row operations of csrc/cpu/row_ops.h.
#include "../epilogues.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include "../checks.h"
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
    for_each_row(rows, n, [&](int64_t r) { bias_softmax_row(zp + r * n, bp, n, log); });
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

}  // namespace fastffnn::cpu
