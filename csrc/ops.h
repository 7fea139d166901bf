// The ops' kernels, written once for any backend B and registered by each
// backend for its dispatch key: csrc/cpu/register_cpu.cpp (CPU) and
// csrc/cuda/register_cuda.cpp (CUDA). Each kernel validates its arguments
// (csrc/checks.h), flattens the leading dims to (rows, features) and composes
// the backend's products and epilogues (csrc/layers.h).
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
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <type_traits>

#include "activation.h"
#include "checks.h"
#include "layers.h"
#include "signatures.h"

namespace fastffnn::ops {

// --------------------------------------------- linear_act: h = act(x W^T + b)
// Forward: one product, then one pass for bias + activation. Backward: one pass
// forming dz = dh * act'(h) and the bias gradient, then the two products.
template <class B>
at::Tensor linear_act(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      c10::string_view activation) {
  const auto guard = B::guard(input);
  const Activation act = parse_activation(activation);
  const auto s = check_linear("linear_act", B::kReducedPrecision, "input", input, "weight", weight, "bias", bias);
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
  const auto s = check_linear("linear_softmax", B::kReducedPrecision, "input", input, "weight", weight, "bias", bias);
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

// Validates logits (..., classes) and returns (rows, classes).
template <class B>
std::pair<int64_t, int64_t> check_logits(const char* op, const at::Tensor& logits) {
  check_floating(op, B::kReducedPrecision, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.size(-1) >= 1, "fastffnn.", op,
                    ": logits must have shape (..., classes) with at least one class, got ", logits.sizes());
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  return {c10::multiply_integers(lead.begin(), lead.end()), logits.size(-1)};
}

template <class B>
std::tuple<at::Tensor, at::Tensor> softmax_nll(const at::Tensor& logits, const at::Tensor& target,
                                               c10::string_view reduction) {
  const auto guard = B::guard(logits);
  constexpr const char* op = "softmax_nll";
  const Reduction red = parse_reduction(reduction);
  const auto [rows, classes] = check_logits<B>(op, logits);
  const bool is_index = check_target(op, logits.sizes(), logits, target);
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
  const auto [rows, classes] = check_logits<B>(op, logits);
  const bool is_index = check_target(op, logits.sizes(), logits, target);
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK_VALUE(lse.device() == logits.device(), "fastffnn.", op, ": lse is on ", lse.device(),
                    " but logits are on ", logits.device());
  TORCH_CHECK_TYPE(lse.scalar_type() == at::toOpMathType(logits.scalar_type()), "fastffnn.", op, ": lse must be ",
                   at::toOpMathType(logits.scalar_type()), ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.sizes() == lead, "fastffnn.", op, ": lse has shape ", lse.sizes(), ", expected ", lead);
  check_grad_loss(op, grad_loss, logits, lead, red);
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
  const auto s = check_network("ffnn", B::kReducedPrecision, input, V_weight, V_bias, W_weight, W_bias);
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
  const auto s = check_network(op, B::kReducedPrecision, input, V_weight, c10::nullopt, W_weight, c10::nullopt);
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
  const auto s = check_network(op, B::kReducedPrecision, input, V_weight, V_bias, W_weight, W_bias);
  TORCH_CHECK_VALUE(s.out >= 1, "fastffnn.", op, ": the network needs at least one class, got ",
                    "W_weight of shape ", W_weight.sizes());
  const auto out_sizes = linear_output_sizes(input, s.out);
  const bool is_index = check_target(op, out_sizes, input, target);
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
  const auto s = check_network(op, B::kReducedPrecision, input, V_weight, c10::nullopt, W_weight, c10::nullopt);
  check_layer_output(op, input, s.hidden, "hidden", hidden);
  check_layer_output(op, input, s.out, "log_probs", log_probs);
  const bool is_index = check_target(op, log_probs.sizes(), input, target);
  const auto lead = input.sizes().slice(0, input.dim() - 1);
  check_grad_loss(op, grad_loss, input, lead, red);

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
