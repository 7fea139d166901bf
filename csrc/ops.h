// The ops' kernels, written once for any backend B and registered by each
// backend for its dispatch key: csrc/cpu/kernels.cpp (CPU) and
// csrc/cuda/register_cuda.cpp (CUDA). Each kernel validates its arguments
// (csrc/checks.h), flattens the leading dims to (rows, features) and composes
// the backend's products and epilogues (the composition below).
//
// Conventions shared by every op:
// * `input` has shape (..., in_features); a 1-D input is one example.
// * weights follow nn.Linear: (out_features, in_features); biases are optional.
// * *_backward kernels return an empty tensor of shape [0] for every gradient
//   output_mask did not ask for, so that no work is spent on it.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <type_traits>
#include <utility>

#include "activation.h"
#include "checks.h"
#include "epilogues.h"
#include "signatures.h"

namespace fastffnn {

// ============================================================ composition
// How every op composes its matrix products and fused epilogues on 2-D
// (rows, features) matrices, for any backend B. A backend provides, as
// static members:
// * kReducedPrecision: whether it takes float16/bfloat16 (computed in float32);
// * guard(t): the device guard for t's device;
// * its products: linear(x, w) = x @ w^T as a new contiguous matrix,
//   input_grad(dz, w) = dz @ w and weight_grad(dz, x) = dz^T @ x;
// * its epilogues, one pass each (csrc/epilogues.h): bias_act_,
//   bias_softmax_, act_backward, softmax_backward, nll_rows, nll_backward,
//   reduce_loss;
// * its whole-network shortcuts, which return nullopt where they do not
//   apply: ffnn_forward (the CPU's one-row loops, CUDA's fused tier) and
//   network_backward (CUDA's fused tier).

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
  const LinearShape s =
      check_linear(op, B::kReducedPrecision, "input", input, "weight", weight, "bias", c10::nullopt).concrete();
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

namespace fastffnn::ops {

// ============================================================ the kernels

// --------------------------------------------- linear_act: h = act(x W^T + b)
// Forward: one product, then one pass for bias + activation. Backward: one pass
// forming dz = dh * act'(h) and the bias gradient, then the two products.
template <class B>
at::Tensor linear_act(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      c10::string_view activation) {
  const auto guard = B::guard(input);
  const Activation act = parse_activation(activation);
  const auto s = check_linear_args("linear_act", B::kReducedPrecision, input, weight, bias, &activation).concrete();
  auto h = linear_act_2d<B>(input.reshape({s.rows, s.in}), weight, bias, act);
  return h.view(linear_output_sizes(input, s.out));
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward(const at::Tensor& grad_output,
                                                                   const at::Tensor& input, const at::Tensor& weight,
                                                                   const at::Tensor& output,
                                                                   c10::string_view activation,
                                                                   std::array<bool, 3> output_mask) {
  const auto guard = B::guard(input);
  const Activation act = parse_activation(activation);
  return layer_backward<B>("linear_act_backward", grad_output, input, weight, output, output_mask,
                           [act](const at::Tensor& dy, const at::Tensor& y, at::Tensor& dz, at::Tensor* gb) {
                             B::act_backward(dy, y, act, dz, gb);
                           });
}

// ------------------------------ linear_softmax: p = softmax(x W^T + b), or log
// Forward: one product, then one row pass for bias + softmax. Backward: one
// pass forming the logits' and the bias gradients, then the two products.
template <class B>
at::Tensor linear_softmax(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          bool log) {
  const auto guard = B::guard(input);
  const auto s = check_linear_args("linear_softmax", B::kReducedPrecision, input, weight, bias, nullptr).concrete();
  auto p = linear_softmax_2d<B>(input.reshape({s.rows, s.in}), weight, bias, log);
  return p.view(linear_output_sizes(input, s.out));
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_softmax_backward(const at::Tensor& grad_output,
                                                                       const at::Tensor& input,
                                                                       const at::Tensor& weight,
                                                                       const at::Tensor& output, bool log,
                                                                       std::array<bool, 3> output_mask) {
  const auto guard = B::guard(input);
  return layer_backward<B>("linear_softmax_backward", grad_output, input, weight, output, output_mask,
                           [log](const at::Tensor& dy, const at::Tensor& y, at::Tensor& dz, at::Tensor* gb) {
                             B::softmax_backward(dy, y, log, dz, gb);
                           });
}

// --------------------------- softmax_nll: -sum(y * log softmax(z)) per row
// One row pass that keeps each row's log-sum-exp, which is all the backward
// needs to rebuild softmax(z) = exp(z - lse).

template <class B>
std::tuple<at::Tensor, at::Tensor> softmax_nll(const at::Tensor& logits, const at::Tensor& target,
                                               c10::string_view reduction) {
  const auto guard = B::guard(logits);
  constexpr const char* op = "softmax_nll";
  const Reduction red = parse_reduction(reduction);
  const auto args = check_softmax_nll_args(B::kReducedPrecision, logits, target, reduction);
  const int64_t rows = args.rows.expect_int(), classes = args.classes.expect_int();
  const bool is_index = args.is_index;
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  const auto z = logits.reshape({rows, classes}).contiguous();
  auto lse = at::empty({rows}, z.options().dtype(at::toOpMathType(z.scalar_type())));
  auto row_loss = B::nll_rows(op, z, target_2d(target, rows, classes, is_index), is_index, &lse);
  return {reduce_loss<B>(row_loss, red, lead, z.scalar_type()), lse.view(lead)};
}

template <class B>
std::tuple<at::Tensor, at::Tensor> softmax_nll_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                        const at::Tensor& target, const at::Tensor& lse,
                                                        c10::string_view reduction, std::array<bool, 2> output_mask) {
  const auto guard = B::guard(logits);
  constexpr const char* op = "softmax_nll_backward";
  const Reduction red = parse_reduction(reduction);
  const auto logits_shape = check_logits(op, B::kReducedPrecision, logits);
  const int64_t rows = logits_shape.first.expect_int(), classes = logits_shape.second.expect_int();
  const bool is_index = check_target(op, logits.sym_sizes(), logits, target);
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK_VALUE(lse.device() == logits.device(), "fastffnn.", op, ": lse is on ", lse.device(),
                    " but logits are on ", logits.device());
  TORCH_CHECK_TYPE(lse.scalar_type() == at::toOpMathType(logits.scalar_type()), "fastffnn.", op, ": lse must be ",
                   at::toOpMathType(logits.scalar_type()), ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.sizes() == lead, "fastffnn.", op, ": lse has shape ", lse.sizes(), ", expected ", lead);
  check_grad_loss(op, grad_loss, logits, logits.sym_sizes().slice(0, logits.dim() - 1), red);
  const auto z = logits.reshape({rows, classes}).contiguous();
  const bool want_target = output_mask[1] && !is_index;
  at::Tensor gt = want_target ? at::empty({rows, classes}, z.options()) : no_grad_placeholder(z);
  auto dz = B::nll_backward(grad_loss, z, lse.reshape({rows}).contiguous(), target_2d(target, rows, classes, is_index),
                            is_index, red, nullptr, want_target ? &gt : nullptr);
  if (want_target) gt = gt.view(logits.sizes());
  return {output_mask[0] ? dz.view(logits.sizes()) : no_grad_placeholder(z), gt};
}

// ------------------------------------ ffnn: softmax(W(act(V(x)))), or log
// Forward: the backend's whole-network path, else two products each followed
// by one epilogue pass; the hidden activations are returned for the backward.
// Backward: the softmax backward fused with W's bias gradient, W's weight
// gradient, the hidden gradient with act' and V's bias gradient in one pass,
// then V's weight and the input gradients.
template <class B>
std::tuple<at::Tensor, at::Tensor> ffnn(const at::Tensor& input, const at::Tensor& V_weight,
                                        const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                        const c10::optional<at::Tensor>& W_bias, c10::string_view activation,
                                        bool log) {
  const auto guard = B::guard(input);
  const Activation act = parse_activation(activation);
  const auto s = check_ffnn_args(B::kReducedPrecision, input, V_weight, V_bias, W_weight, W_bias, activation).concrete();
  auto [p, h] = ffnn_forward_2d<B>(input.reshape({s.rows, s.in}), V_weight, V_bias, W_weight, W_bias, act, log);
  return {p.view(linear_output_sizes(input, s.out)), h.view(linear_output_sizes(input, s.hidden))};
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ffnn_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& hidden, const at::Tensor& output, c10::string_view activation, bool log,
    std::array<bool, 5> output_mask) {
  const auto guard = B::guard(input);
  constexpr const char* op = "ffnn_backward";
  const Activation act = parse_activation(activation);
  const auto s =
      check_network(op, B::kReducedPrecision, input, V_weight, c10::nullopt, W_weight, c10::nullopt).concrete();
  check_layer_output(op, input, s.hidden, "hidden", hidden);
  check_layer_output(op, input, s.out, "output", output);
  check_layer_output(op, input, s.out, "grad_output", grad_output);

  OutputGradient grad;
  grad.output = output.reshape({s.rows, s.out}).contiguous();
  grad.grad_output = grad_output.reshape({s.rows, s.out}).contiguous();
  grad.log = log;
  auto grads = network_backward_2d<B>(grad, input.reshape({s.rows, s.in}), V_weight, W_weight,
                                      hidden.reshape({s.rows, s.hidden}).contiguous(), act, output_mask);
  if (output_mask[0]) std::get<0>(grads) = std::get<0>(grads).view(input.sizes());
  return grads;
}

// ---------------------------- ffnn_nll: the network and its cross-entropy
// The output layer produces log-probabilities directly (never log(p)); the
// backward starts from exp(log_probs) - y, fused with W's bias gradient, and
// continues as ffnn_backward.
template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor> ffnn_nll(const at::Tensor& input, const at::Tensor& V_weight,
                                                        const c10::optional<at::Tensor>& V_bias,
                                                        const at::Tensor& W_weight,
                                                        const c10::optional<at::Tensor>& W_bias,
                                                        const at::Tensor& target, c10::string_view activation,
                                                        c10::string_view reduction) {
  const auto guard = B::guard(input);
  constexpr const char* op = "ffnn_nll";
  const Activation act = parse_activation(activation);
  const Reduction red = parse_reduction(reduction);
  const auto args =
      check_ffnn_nll_args(op, B::kReducedPrecision, input, V_weight, V_bias, W_weight, W_bias, target, activation,
                          reduction);
  const NetworkShape s = args.shape.concrete();
  const bool is_index = args.is_index;
  const auto out_sizes = linear_output_sizes(input, s.out);
  auto [lp, h] = ffnn_forward_2d<B>(input.reshape({s.rows, s.in}), V_weight, V_bias, W_weight, W_bias, act,
                                    /*log=*/true);
  auto row_loss = B::nll_rows(op, lp, target_2d(target, s.rows, s.out, is_index), is_index, nullptr);
  const auto lead = input.sizes().slice(0, input.dim() - 1);
  return {reduce_loss<B>(row_loss, red, lead, lp.scalar_type()), h.view(linear_output_sizes(input, s.hidden)),
          lp.view(out_sizes)};
}

template <class B>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ffnn_nll_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& hidden, const at::Tensor& log_probs, const at::Tensor& target, c10::string_view activation,
    c10::string_view reduction, std::array<bool, 6> output_mask) {
  const auto guard = B::guard(input);
  constexpr const char* op = "ffnn_nll_backward";
  const Activation act = parse_activation(activation);
  const Reduction red = parse_reduction(reduction);
  const auto s =
      check_network(op, B::kReducedPrecision, input, V_weight, c10::nullopt, W_weight, c10::nullopt).concrete();
  check_layer_output(op, input, s.hidden, "hidden", hidden);
  check_layer_output(op, input, s.out, "log_probs", log_probs);
  const bool is_index = check_target(op, log_probs.sym_sizes(), input, target);
  check_grad_loss(op, grad_loss, input, input.sym_sizes().slice(0, input.dim() - 1), red);

  const bool want_target = output_mask[5] && !is_index;
  at::Tensor gt = want_target ? at::empty({s.rows, s.out}, log_probs.options()) : no_grad_placeholder(log_probs);
  OutputGradient grad;
  grad.nll = true;
  grad.output = log_probs.reshape({s.rows, s.out}).contiguous();
  grad.grad_loss = grad_loss.contiguous();
  grad.target = target_2d(target, s.rows, s.out, is_index);
  grad.is_index = is_index;
  grad.reduction = red;
  grad.grad_target = want_target ? &gt : nullptr;
  auto [gx, gVw, gVb, gWw, gWb] =
      network_backward_2d<B>(grad, input.reshape({s.rows, s.in}), V_weight, W_weight,
                             hidden.reshape({s.rows, s.hidden}).contiguous(), act,
                             c10::ArrayRef<bool>(output_mask.data(), 5));
  if (output_mask[0]) gx = gx.view(input.sizes());
  if (want_target) gt = gt.view(log_probs.sizes());
  return {gx, gVw, gVb, gWw, gWb, gt};
}

// ------------------------------------------------------------ registration
// Registers backend B's kernels for every op, each checked against the op's
// signature (csrc/signatures.h).
template <class B>
void register_kernels(torch::Library& m) {
#define FASTFFNN_REGISTER(name)                                                    \
  static_assert(std::is_same_v<decltype(name<B>), signature::name>, #name);       \
  m.impl(#name, &name<B>)
  FASTFFNN_REGISTER(linear_act);
  FASTFFNN_REGISTER(linear_act_backward);
  FASTFFNN_REGISTER(linear_softmax);
  FASTFFNN_REGISTER(linear_softmax_backward);
  FASTFFNN_REGISTER(softmax_nll);
  FASTFFNN_REGISTER(softmax_nll_backward);
  FASTFFNN_REGISTER(ffnn);
  FASTFFNN_REGISTER(ffnn_backward);
  FASTFFNN_REGISTER(ffnn_nll);
  FASTFFNN_REGISTER(ffnn_nll_backward);
#undef FASTFFNN_REGISTER
}

}  // namespace fastffnn::ops
