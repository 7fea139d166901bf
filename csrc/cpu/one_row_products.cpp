#include "one_row_products.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "one_row.h"

namespace fastffnn::cpu {

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

std::pair<at::Tensor, at::Tensor> ffnn_forward_one_row(const at::Tensor& x, const at::Tensor& V_weight,
                                                       const c10::optional<at::Tensor>& V_bias,
                                                       const at::Tensor& W_weight,
                                                       const c10::optional<at::Tensor>& W_bias, Activation act,
                                                       bool log) {
  const at::Tensor xc = x.contiguous();
  const int64_t in = V_weight.size(1), hidden = V_weight.size(0), classes = W_weight.size(0);
  auto h = at::empty({1, hidden}, x.options());
  auto p = at::empty({1, classes}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fastffnn.ffnn_forward_one_row", [&] {
    using T = scalar_t;
    const at::Tensor Vb = V_bias.has_value() ? V_bias->contiguous() : at::Tensor();
    const at::Tensor Wb = W_bias.has_value() ? W_bias->contiguous() : at::Tensor();
    T* hp = h.data_ptr<T>();
    T* pp = p.data_ptr<T>();
    matvec(V_weight.const_data_ptr<T>(), xc.const_data_ptr<T>(), hp, hidden, in);
    dispatch_activation(act, [&](auto tag) {
      bias_act_row<decltype(tag)::value>(hp, Vb.defined() ? Vb.const_data_ptr<T>() : nullptr, hidden);
    });
    matvec(W_weight.const_data_ptr<T>(), hp, pp, classes, hidden);
    bias_softmax_row(pp, Wb.defined() ? Wb.const_data_ptr<T>() : nullptr, classes, log);
  });
  return {p, h};
}

}  // namespace fastffnn::cpu
