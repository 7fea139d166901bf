// How every op composes its matrix products and fused epilogues, written once
// for any backend B (csrc/cpu/register_cpu.cpp, csrc/cuda/register_cuda.cpp). The op
// entry points (csrc/ops.h) validate the arguments, flatten the leading dims
// and call these on 2-D (rows, features) matrices.
//
// A backend B provides, as static members:
// * its products: linear(x, w) = x @ w^T as a new contiguous matrix,
//   input_grad(dz, w) = dz @ w and weight_grad(dz, x) = dz^T @ x;
// * its epilogues, one pass each (csrc/epilogues.h): bias_act_,
//   bias_softmax_, act_backward, softmax_backward, nll_rows, nll_backward,
//   reduce_loss;
// * its whole-network shortcuts, which return nullopt where they do not
//   apply: ffnn_forward (the CPU's one-row loops, CUDA's fused tier) and
//   network_backward (CUDA's fused tier).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>
#include <utility>

#include "activation.h"
#include "checks.h"

namespace fastffnn {

// Where the output layer's gradient dz2 = dL/dz (z the logits) comes from:
// softmax's output and its gradient (ffnn), or the NLL loss of log-softmax
// output against a target (ffnn_nll). All matrices 2-D and contiguous.
struct OutputGradient {
  bool nll = false;
  at::Tensor output;       // (rows, classes): probabilities, or log-probabilities if log or nll
  at::Tensor grad_output;  // softmax: dL/d(output)
  bool log = false;        // softmax: the output is log_softmax
  at::Tensor grad_loss;    // nll: dL/d(loss), per row for reduction 'none'
  at::Tensor target;       // nll: int64 (rows,) class indices or (rows, classes) probabilities
  bool is_index = false;
  Reduction reduction = Reduction::Mean;
  at::Tensor* grad_target = nullptr;  // nll with probability targets: where the target's gradient goes
};

using NetworkGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// An empty tensor of shape [0]: the placeholder for a gradient not asked for.
inline at::Tensor no_grad_placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

// The target as the kernels read it: contiguous int64 (rows,) class indices,
// or contiguous (rows, classes) probabilities.
inline at::Tensor target_2d(const at::Tensor& target, int64_t rows, int64_t classes, bool is_index) {
  if (is_index) return target.reshape({rows}).to(at::kLong).contiguous();
  return target.reshape({rows, classes}).contiguous();
}

// act(x @ w^T + b) as a new contiguous (rows, out) matrix.
template <class B>
at::Tensor linear_act_2d(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         Activation act) {
  auto z = B::linear(x, w);
  if (z.numel() != 0) B::bias_act_(z, b, act);
  return z;
}

// softmax(x @ w^T + b) over each row (log_softmax if log), as a new (rows, out).
template <class B>
at::Tensor linear_softmax_2d(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                             bool log) {
  auto z = B::linear(x, w);
  if (z.numel() != 0) B::bias_softmax_(z, b, log);
  return z;
}

// Gradients of a linear layer y = x @ w^T given dz = dL/dy: (dz @ w if
// need_input, dz^T @ x if need_weight), placeholders for the rest.
template <class B>
std::pair<at::Tensor, at::Tensor> linear_backward_2d(const at::Tensor& dz, const at::Tensor& x, const at::Tensor& w,
                                                     bool need_input, bool need_weight) {
  return {need_input ? B::input_grad(dz, w) : no_grad_placeholder(dz),
          need_weight ? B::weight_grad(dz, x) : no_grad_placeholder(dz)};
}

// The three gradients (input, weight, bias) of one layer y = f(x @ w^T + b),
// given grad_output = dL/dy and the saved output y, both shaped like the
// layer's result for `input` (..., out). `epilogue_backward(dy, y, dz,
// grad_bias)` forms dz = dL/d(x @ w^T + b) in one pass. Validates every
// operand, naming `op`.
template <class B, typename EpilogueBackward>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_backward(const char* op, const at::Tensor& grad_output,
                                                              const at::Tensor& input, const at::Tensor& weight,
                                                              const at::Tensor& output, std::array<bool, 3> mask,
                                                              const EpilogueBackward& epilogue_backward) {
  const LinearShape s = check_linear(op, B::kReducedPrecision, "input", input, "weight", weight, "bias", c10::nullopt);
  check_layer_output(op, input, s.out, "output", output);
  check_layer_output(op, input, s.out, "grad_output", grad_output);

  const auto y = output.reshape({s.rows, s.out}).contiguous();
  const auto dy = grad_output.reshape({s.rows, s.out}).contiguous();
  auto dz = at::empty_like(y);
  at::Tensor gb = mask[2] ? at::empty({s.out}, y.options()) : no_grad_placeholder(y);
  epilogue_backward(dy, y, dz, mask[2] ? &gb : nullptr);
  auto [gx, gw] = linear_backward_2d<B>(dz, input.reshape({s.rows, s.in}), weight, mask[0], mask[1]);
  if (mask[0]) gx = gx.view(input.sizes());
  return {gx, gw, gb};
}

// Reduces per-row losses (in the inputs' compute type) to the loss in
// `dtype`: 'none' keeps them, shaped `lead`; 'sum' and 'mean' add them in a
// fixed order in double precision.
template <class B>
at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction, at::IntArrayRef lead,
                       at::ScalarType dtype) {
  if (reduction == Reduction::None) return row_loss.to(dtype).view(lead);
  return B::reduce_loss(row_loss, reduction).to(dtype);
}

// (output, hidden) of the network softmax(W(act(V(x)))) (log_softmax if
// log): the backend's whole-network path where it applies, else two layers.
template <class B>
std::pair<at::Tensor, at::Tensor> ffnn_forward_2d(const at::Tensor& x, const at::Tensor& V_weight,
                                                  const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                                  const c10::optional<at::Tensor>& W_bias, Activation act, bool log) {
  if (auto whole = B::ffnn_forward(x, V_weight, V_bias, W_weight, W_bias, act, log)) return *std::move(whole);
  auto h = linear_act_2d<B>(x, V_weight, V_bias, act);
  return {linear_softmax_2d<B>(h, W_weight, W_bias, log), h};
}

// The five gradients of the network given dz2, the gradient of the output
// layer's pre-activation: (input, V.weight, V.bias, W.weight, W.bias).
// grad_W_bias, if asked for, has been formed with dz2 and is passed through.
template <class B>
NetworkGrads backprop_network_2d(const at::Tensor& dz2, const at::Tensor& x, const at::Tensor& V_weight,
                                 const at::Tensor& W_weight, const at::Tensor& hidden, Activation act,
                                 c10::ArrayRef<bool> mask, at::Tensor grad_W_bias) {
  at::Tensor gWw = mask[3] ? B::weight_grad(dz2, hidden) : no_grad_placeholder(dz2);
  at::Tensor gx = no_grad_placeholder(dz2), gVw = gx, gVb = gx;
  if (mask[0] || mask[1] || mask[2]) {
    if (mask[2]) gVb = at::empty({hidden.size(1)}, hidden.options());
    // dL/dhidden, turned in place into dL/d(pre-activation) by the epilogue.
    at::Tensor dz1 = B::input_grad(dz2, W_weight);
    B::act_backward(dz1, hidden, act, dz1, mask[2] ? &gVb : nullptr);
    std::tie(gx, gVw) = linear_backward_2d<B>(dz1, x, V_weight, mask[0], mask[1]);
  }
  return {gx, gVw, gVb, gWw, std::move(grad_W_bias)};
}

// The five gradients of the network from its output gradient: the backend's
// whole-network path where it applies, else the output layer's epilogue and
// backprop_network_2d. Entries whose mask is false are placeholders.
template <class B>
NetworkGrads network_backward_2d(const OutputGradient& grad, const at::Tensor& x, const at::Tensor& V_weight,
                                 const at::Tensor& W_weight, const at::Tensor& hidden, Activation act,
                                 c10::ArrayRef<bool> mask) {
  if (auto whole = B::network_backward(grad, x, V_weight, W_weight, hidden, act, mask)) return *std::move(whole);
  const at::Tensor& y = grad.output;
  at::Tensor gWb = mask[4] ? at::empty({y.size(1)}, y.options()) : no_grad_placeholder(y);
  at::Tensor dz2;
  if (grad.nll) {
    dz2 = B::nll_backward(grad.grad_loss, y, c10::nullopt, grad.target, grad.is_index, grad.reduction,
                          mask[4] ? &gWb : nullptr, grad.grad_target);
  } else {
    dz2 = at::empty_like(y);
    B::softmax_backward(grad.grad_output, y, grad.log, dz2, mask[4] ? &gWb : nullptr);
  }
  return backprop_network_2d<B>(dz2, x, V_weight, W_weight, hidden, act, mask, gWb);
}

}  // namespace fastffnn
