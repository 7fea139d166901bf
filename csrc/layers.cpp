#include "layers.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include "cpu/one_row_products.h"
#include "device.h"
#include "epilogues.h"
#include "fused_tier.h"

namespace fastffnn {

// The epilogue implementation for the tensors' device.
#ifdef FASTFFNN_WITH_CUDA
#define FASTFFNN_ON(t, fn, ...) (runs_cuda_kernels(t) ? cuda::fn(__VA_ARGS__) : cpu::fn(__VA_ARGS__))
#else
#define FASTFFNN_ON(t, fn, ...) cpu::fn(__VA_ARGS__)
#endif

namespace {

// x @ w^T into a new contiguous (rows, out) matrix, ready for an epilogue.
at::Tensor linear_2d(const at::Tensor& x, const at::Tensor& w) {
  if (!runs_cuda_kernels(x) && cpu::one_row_applies(x, w)) return cpu::linear_one_row(x, w);
  auto z = at::empty({x.size(0), w.size(0)}, x.options());
  if (z.numel() != 0) at::mm_out(z, x, w.t());
  return z;
}

// dz @ w: the gradient of a linear layer's input.
at::Tensor input_grad_2d(const at::Tensor& dz, const at::Tensor& w) {
  if (!runs_cuda_kernels(dz) && cpu::one_row_applies(dz, w)) return cpu::input_grad_one_row(dz, w);
  return at::mm(dz, w);
}

// dz^T @ x: the gradient of a linear layer's weight. at::mm with an empty
// inner dimension returns zeros, which is right for an empty batch.
at::Tensor weight_grad_2d(const at::Tensor& dz, const at::Tensor& x) {
  if (!runs_cuda_kernels(dz) && cpu::one_row_applies(dz)) return cpu::weight_grad_one_row(dz, x);
  return at::mm(dz.t(), x);
}

}  // namespace

at::Tensor no_grad_placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

at::Tensor linear_act_2d(const at::Tensor& x, const at::Tensor& w,
                         const c10::optional<at::Tensor>& b, Activation act) {
  auto z = linear_2d(x, w);
  if (z.numel() != 0) FASTFFNN_ON(z, bias_act_, z, b, act);
  return z;
}

at::Tensor linear_softmax_2d(const at::Tensor& x, const at::Tensor& w,
                             const c10::optional<at::Tensor>& b, bool log) {
  auto z = linear_2d(x, w);
  if (z.numel() != 0) FASTFFNN_ON(z, bias_softmax_, z, b, log);
  return z;
}

void act_backward_2d(const at::Tensor& dy, const at::Tensor& y, Activation act, at::Tensor& dz,
                     at::Tensor* grad_bias) {
  FASTFFNN_ON(y, act_backward, dy, y, act, dz, grad_bias);
}

void softmax_backward_2d(const at::Tensor& dout, const at::Tensor& y, bool log, at::Tensor& dz,
                         at::Tensor* grad_bias) {
  FASTFFNN_ON(y, softmax_backward, dout, y, log, dz, grad_bias);
}

std::pair<at::Tensor, at::Tensor> linear_backward_2d(const at::Tensor& dz, const at::Tensor& x,
                                                     const at::Tensor& w, bool need_input,
                                                     bool need_weight) {
  at::Tensor gx = need_input ? input_grad_2d(dz, w) : no_grad_placeholder(dz);
  at::Tensor gw = need_weight ? weight_grad_2d(dz, x) : no_grad_placeholder(dz);
  return {gx, gw};
}

at::Tensor nll_rows_2d(const char* op, const at::Tensor& z, const at::Tensor& target,
                       bool is_index, at::Tensor* lse) {
  return FASTFFNN_ON(z, nll_rows, op, z, target, is_index, lse);
}

at::Tensor target_2d(const at::Tensor& target, int64_t rows, int64_t classes, bool is_index) {
  if (is_index) return target.reshape({rows}).to(at::kLong).contiguous();
  return target.reshape({rows, classes}).contiguous();
}

at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction, at::IntArrayRef lead,
                       at::ScalarType dtype) {
  if (reduction == Reduction::None) return row_loss.to(dtype).view(lead);
  return FASTFFNN_ON(row_loss, reduce_loss, row_loss, reduction).to(dtype);
}

at::Tensor nll_backward_2d(const at::Tensor& grad_loss, const at::Tensor& z,
                           const c10::optional<at::Tensor>& shift, const at::Tensor& target,
                           bool is_index, Reduction reduction, at::Tensor* grad_bias,
                           at::Tensor* grad_target) {
  return FASTFFNN_ON(z, nll_backward, grad_loss, z, shift, target, is_index, reduction, grad_bias,
                     grad_target);
}

std::pair<at::Tensor, at::Tensor> ffnn_forward_2d(const at::Tensor& x, const at::Tensor& V_weight,
                                                  const c10::optional<at::Tensor>& V_bias,
                                                  const at::Tensor& W_weight,
                                                  const c10::optional<at::Tensor>& W_bias, Activation act,
                                                  bool log) {
#ifdef FASTFFNN_WITH_CUDA
  if (cuda::fused_tier_applies(x, x.size(1), V_weight.size(0), W_weight.size(0)))
    return cuda::fused_ffnn_forward(x, V_weight, V_bias, W_weight, W_bias, act, log);
#endif
  if (!runs_cuda_kernels(x) && cpu::one_row_applies(x, V_weight) && W_weight.is_contiguous())
    return cpu::ffnn_forward_one_row(x, V_weight, V_bias, W_weight, W_bias, act, log);
  auto h = linear_act_2d(x, V_weight, V_bias, act);
  return {linear_softmax_2d(h, W_weight, W_bias, log), h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backprop_network_2d(
    const at::Tensor& dz2, const at::Tensor& x, const at::Tensor& V_weight,
    const at::Tensor& W_weight, const at::Tensor& hidden, Activation act,
    c10::ArrayRef<bool> mask, at::Tensor grad_W_bias) {
  at::Tensor gWw = mask[3] ? weight_grad_2d(dz2, hidden) : no_grad_placeholder(dz2);
  at::Tensor gx = no_grad_placeholder(dz2), gVw = gx, gVb = gx;
  if (mask[0] || mask[1] || mask[2]) {
    if (mask[2]) gVb = at::empty({hidden.size(1)}, hidden.options());
    // dL/dhidden, turned in place into dL/d(pre-activation) by the epilogue.
    at::Tensor dz1 = input_grad_2d(dz2, W_weight);
    act_backward_2d(dz1, hidden, act, dz1, mask[2] ? &gVb : nullptr);
    std::tie(gx, gVw) = linear_backward_2d(dz1, x, V_weight, mask[0], mask[1]);
  }
  return {gx, gVw, gVb, gWw, std::move(grad_W_bias)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> network_backward_2d(
    const OutputGradient& grad, const at::Tensor& x, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& hidden, Activation act, c10::ArrayRef<bool> mask) {
  const at::Tensor& y = grad.output;
  at::Tensor gWb = mask[4] ? at::empty({y.size(1)}, y.options()) : no_grad_placeholder(y);
#ifdef FASTFFNN_WITH_CUDA
  if (grad.grad_target == nullptr && cuda::fused_tier_applies(y, x.size(1), hidden.size(1), y.size(1))) {
    const bool lower = mask[0] || mask[1] || mask[2];
    at::Tensor gVb = mask[2] ? at::empty({hidden.size(1)}, hidden.options()) : no_grad_placeholder(y);
    auto [dz2, dz1] = cuda::fused_network_backward(grad, W_weight, hidden, act, mask[4] ? &gWb : nullptr,
                                                   mask[2] ? &gVb : nullptr, lower);
    at::Tensor gWw = mask[3] ? at::mm(dz2.t(), hidden) : no_grad_placeholder(y);
    auto [gx, gVw] = lower ? linear_backward_2d(dz1, x, V_weight, mask[0], mask[1])
                           : std::pair<at::Tensor, at::Tensor>{no_grad_placeholder(y), no_grad_placeholder(y)};
    return {gx, gVw, gVb, gWw, gWb};
  }
#endif
  at::Tensor dz2;
  if (grad.nll) {
    dz2 = nll_backward_2d(grad.grad_loss, y, c10::nullopt, grad.target, grad.is_index, grad.reduction,
                          mask[4] ? &gWb : nullptr, grad.grad_target);
  } else {
    dz2 = at::empty_like(y);
    softmax_backward_2d(grad.grad_output, y, grad.log, dz2, mask[4] ? &gWb : nullptr);
  }
  return backprop_network_2d(dz2, x, V_weight, W_weight, hidden, act, mask, gWb);
}

}  // namespace fastffnn
