#include "layers.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include "../checks.h"
#include "epilogues.h"

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

// x @ w^T into a new contiguous (rows, out) matrix, ready for an epilogue.
at::Tensor linear_2d(const at::Tensor& x, const at::Tensor& w) {
  auto z = at::empty({x.size(0), w.size(0)}, x.options());
  if (z.numel() != 0) at::mm_out(z, x, w.t());
  return z;
}

}  // namespace

at::Tensor no_grad_placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

at::Tensor linear_act_2d(const at::Tensor& x, const at::Tensor& w,
                         const c10::optional<at::Tensor>& b, Activation act) {
  auto z = linear_2d(x, w);
  const auto bc = contiguous(b);
  const int64_t rows = z.size(0), n = z.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fastffnn.linear_act", [&] {
    scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* bp = data_or_null<scalar_t>(bc);
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation A = decltype(tag)::value;
      for_each_row(rows, n, [&](int64_t r) { bias_act_row<A>(zp + r * n, bp, n); });
    });
  });
  return z;
}

at::Tensor linear_softmax_2d(const at::Tensor& x, const at::Tensor& w,
                             const c10::optional<at::Tensor>& b, bool log) {
  auto z = linear_2d(x, w);
  const auto bc = contiguous(b);
  const int64_t rows = z.size(0), n = z.size(1);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "fastffnn.linear_softmax", [&] {
    scalar_t* zp = z.data_ptr<scalar_t>();
    const scalar_t* bp = data_or_null<scalar_t>(bc);
    for_each_row(rows, n, [&](int64_t r) { bias_softmax_row(zp + r * n, bp, n, log); });
  });
  return z;
}

void act_backward_2d(const at::Tensor& dy, const at::Tensor& y, Activation act, at::Tensor& dz,
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

void softmax_backward_2d(const at::Tensor& dout, const at::Tensor& y, bool log, at::Tensor& dz,
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

std::pair<at::Tensor, at::Tensor> linear_backward_2d(const at::Tensor& dz, const at::Tensor& x,
                                                     const at::Tensor& w, bool need_input,
                                                     bool need_weight) {
  // at::mm with an empty inner dimension returns zeros, which is the right
  // weight gradient for an empty batch.
  at::Tensor gx = need_input ? at::mm(dz, w) : no_grad_placeholder(dz);
  at::Tensor gw = need_weight ? at::mm(dz.t(), x) : no_grad_placeholder(dz);
  return {gx, gw};
}

at::Tensor nll_rows_2d(const char* op, const at::Tensor& z, const at::Tensor& target,
                       bool is_index, at::Tensor* lse) {
  const int64_t rows = z.size(0), n = z.size(1);
  if (is_index) {
    // Range-check every class index before any kernel reads memory with it.
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

at::Tensor target_2d(const at::Tensor& target, int64_t rows, int64_t classes, bool is_index) {
  if (is_index) return target.reshape({rows}).to(at::kLong).contiguous();
  return target.reshape({rows, classes}).contiguous();
}

at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction, at::IntArrayRef lead) {
  if (reduction == Reduction::None) return row_loss.view(lead);
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

at::Tensor nll_backward_2d(const at::Tensor& grad_loss, const at::Tensor& z,
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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backprop_network_2d(
    const at::Tensor& dz2, const at::Tensor& x, const at::Tensor& V_weight,
    const at::Tensor& W_weight, const at::Tensor& hidden, Activation act,
    c10::ArrayRef<bool> mask, at::Tensor grad_W_bias) {
  at::Tensor gWw = mask[3] ? at::mm(dz2.t(), hidden) : no_grad_placeholder(dz2);
  at::Tensor gx = no_grad_placeholder(dz2), gVw = gx, gVb = gx;
  if (mask[0] || mask[1] || mask[2]) {
    // dL/dhidden, turned in place into dL/d(pre-activation) by the epilogue.
    at::Tensor dz1 = at::mm(dz2, W_weight);
    if (mask[2]) gVb = at::empty({hidden.size(1)}, hidden.options());
    act_backward_2d(dz1, hidden, act, dz1, mask[2] ? &gVb : nullptr);
    std::tie(gx, gVw) = linear_backward_2d(dz1, x, V_weight, mask[0], mask[1]);
  }
  return {gx, gVw, gVb, gWw, std::move(grad_W_bias)};
}

}  // namespace fastffnn::cpu
