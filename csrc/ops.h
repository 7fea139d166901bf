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
#include <string>
#include <vector>
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
//   apply: network_forward (the CPU's one-row loops for any depth, CUDA's
//   fused tier for one hidden layer) and network_backward (CUDA's fused tier).

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

// (output, hidden activations) of the network softmax(L_L(act(... act(L_1 x))))
// (log_softmax if log): the backend's whole-network path where it applies,
// else each hidden layer's product and bias + activation epilogue, then the
// output layer's product and softmax epilogue.
template <class B>
std::pair<at::Tensor, std::vector<at::Tensor>> network_forward_2d(const at::Tensor& x, const Network& net,
                                                                  bool log) {
  if (auto whole = B::network_forward(x, net, log)) return *std::move(whole);
  std::vector<at::Tensor> hidden;
  hidden.reserve(net.depth() - 1);
  at::Tensor a = x;
  for (size_t k = 0; k + 1 < net.depth(); ++k) {
    a = linear_act_2d<B>(a, net.weights[k], net.bias(k), net.acts[k]);
    hidden.push_back(a);
  }
  return {linear_softmax_2d<B>(a, net.weights.back(), net.bias(net.depth() - 1), log), std::move(hidden)};
}

// The placeholders of a network's gradients, with the bias gradients asked
// for allocated (the epilogues fill them).
inline NetworkGradients network_gradients(const Network& net, const NetworkMask& mask, const at::Tensor& like) {
  NetworkGradients g;
  g.input = no_grad_placeholder(like);
  for (size_t k = 0; k < net.depth(); ++k) {
    g.weights.push_back(no_grad_placeholder(like));
    g.biases.push_back(mask.biases[k] ? at::empty({net.weights[k].size(0)}, like.options())
                                      : no_grad_placeholder(like));
  }
  return g;
}

// Backpropagates dz, the gradient of the output layer's pre-activation
// (whose bias gradient the output epilogue has formed into g), through the
// layers: at each layer its weight gradient, then (where anything below is
// asked for) the gradient of its input, turned by the hidden layer's
// activation epilogue into the next dz, with that layer's bias gradient.
template <class B>
void backprop_network_2d(at::Tensor dz, const at::Tensor& x, const Network& net,
                         const std::vector<at::Tensor>& hidden, const NetworkMask& mask, NetworkGradients& g) {
  for (size_t k = net.depth(); k-- > 0;) {
    const at::Tensor& a = k == 0 ? x : hidden[k - 1];
    if (mask.weights[k]) g.weights[k] = B::weight_grad(dz, a);
    if (!mask.below(k)) return;
    at::Tensor da = B::input_grad(dz, net.weights[k]);
    if (k == 0) {
      g.input = std::move(da);
      return;
    }
    // dL/d(activation), turned in place into dL/d(pre-activation).
    B::act_backward(da, a, net.acts[k - 1], da, mask.biases[k - 1] ? &g.biases[k - 1] : nullptr);
    dz = std::move(da);
  }
}

// The network's gradients from its output's gradient: the backend's
// whole-network path where it applies, else the output layer's epilogue and
// backprop_network_2d.
template <class B>
NetworkGradients network_backward_2d(const OutputGradient& grad, const at::Tensor& x, const Network& net,
                                     const std::vector<at::Tensor>& hidden, const NetworkMask& mask) {
  if (auto whole = B::network_backward(grad, x, net, hidden, mask)) return *std::move(whole);
  const at::Tensor& y = grad.output;
  NetworkGradients g = network_gradients(net, mask, y);
  const size_t last = net.depth() - 1;
  at::Tensor* grad_bias = mask.biases[last] ? &g.biases[last] : nullptr;
  at::Tensor dz;
  if (grad.nll) {
    dz = B::nll_backward(grad.grad_loss, y, c10::nullopt, grad.target, grad.is_index, grad.reduction, grad_bias,
                         grad.grad_target);
  } else {
    dz = at::empty_like(y);
    B::softmax_backward(grad.grad_output, y, grad.log, dz, grad_bias);
  }
  backprop_network_2d<B>(std::move(dz), x, net, hidden, mask, g);
  return g;
}

// The lecture's network softmax(W(act(V x))) as a Network of two layers, and
// the mask of its five gradients (input, V.weight, V.bias, W.weight, W.bias).
inline Network two_layer_network(const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
                                 const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias,
                                 Activation act) {
  return Network{{V_weight, W_weight}, {V_bias, W_bias}, {act}};
}
inline Network two_layer_network(const at::Tensor& V_weight, const at::Tensor& W_weight, Activation act) {
  return Network{{V_weight, W_weight}, {}, {act}};
}
inline NetworkMask two_layer_mask(c10::ArrayRef<bool> mask) {
  return NetworkMask{mask[0], {mask[1], mask[3]}, {mask[2], mask[4]}};
}
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> two_layer_grads(NetworkGradients g) {
  return {std::move(g.input), std::move(g.weights[0]), std::move(g.biases[0]), std::move(g.weights[1]),
          std::move(g.biases[1])};
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
  auto [p, h] = network_forward_2d<B>(input.reshape({s.rows, s.in}),
                                      two_layer_network(V_weight, V_bias, W_weight, W_bias, act), log);
  return {p.view(linear_output_sizes(input, s.out)), h[0].view(linear_output_sizes(input, s.hidden))};
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
  auto grads = two_layer_grads(network_backward_2d<B>(grad, input.reshape({s.rows, s.in}),
                                                      two_layer_network(V_weight, W_weight, act),
                                                      {hidden.reshape({s.rows, s.hidden}).contiguous()},
                                                      two_layer_mask(output_mask)));
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
  auto [lp, hs] = network_forward_2d<B>(input.reshape({s.rows, s.in}),
                                        two_layer_network(V_weight, V_bias, W_weight, W_bias, act), /*log=*/true);
  const at::Tensor& h = hs[0];
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
      two_layer_grads(network_backward_2d<B>(grad, input.reshape({s.rows, s.in}),
                                             two_layer_network(V_weight, W_weight, act),
                                             {hidden.reshape({s.rows, s.hidden}).contiguous()},
                                             two_layer_mask(c10::ArrayRef<bool>(output_mask.data(), 5))));
  if (output_mask[0]) gx = gx.view(input.sizes());
  if (want_target) gt = gt.view(log_probs.sizes());
  return {gx, gVw, gVb, gWw, gWb, gt};
}

// --------------------- mlp: softmax(L_L(act(... act(L_1 x)))), any depth L >= 1
// The engine of ffnn for a list of layers: the backend's whole-network path
// where it applies, else each layer's product and its epilogue; the hidden
// activations are returned for the backward, which runs the output epilogue
// and then, layer by layer, the weight gradient, the input gradient and the
// activation epilogue fused with the bias gradient.

inline Network make_network(at::TensorList weights, std::vector<c10::optional<at::Tensor>> biases,
                            c10::ArrayRef<std::string> activations) {
  Network net{weights.vec(), std::move(biases), {}};
  for (const auto& a : activations) net.acts.push_back(parse_activation(a));
  return net;
}

// The mask of the mlp backward ops, [input, weights..., biases..., (target)],
// as a NetworkMask; `extra` is 1 where the op also returns the target's gradient.
inline NetworkMask network_mask(const char* op, const c10::List<bool>& m, size_t depth, size_t extra) {
  TORCH_CHECK_VALUE(m.size() == 1 + 2 * depth + extra, "fastffnn.", op, ": output_mask must have ",
                    1 + 2 * depth + extra, " entries for ", depth, " layers, got ", m.size());
  NetworkMask mask;
  mask.input = m.get(0);
  for (size_t k = 0; k < depth; ++k) {
    mask.weights.push_back(m.get(1 + k));
    mask.biases.push_back(m.get(1 + depth + k));
  }
  return mask;
}

inline std::vector<at::Tensor> rows_2d(at::TensorList ts, int64_t rows) {
  std::vector<at::Tensor> out;
  for (const auto& t : ts) out.push_back(t.reshape({rows, t.size(-1)}).contiguous());
  return out;
}

inline std::vector<at::Tensor> hidden_views(std::vector<at::Tensor> hidden, const at::Tensor& input) {
  for (auto& h : hidden) h = h.view(linear_output_sizes(input, h.size(1)));
  return hidden;
}

template <class B>
std::tuple<at::Tensor, std::vector<at::Tensor>> mlp(const at::Tensor& input, at::TensorList weights,
                                                    const c10::List<c10::optional<at::Tensor>>& biases,
                                                    c10::ArrayRef<std::string> activations, bool log) {
  const auto guard = B::guard(input);
  auto b = biases.vec();
  const MlpShape s = check_mlp("mlp", B::kReducedPrecision, input, weights, &b, activations).concrete();
  auto [p, hidden] = network_forward_2d<B>(input.reshape({s.rows, s.sizes[0]}),
                                           make_network(weights, std::move(b), activations), log);
  return {p.view(linear_output_sizes(input, s.sizes.back())), hidden_views(std::move(hidden), input)};
}

template <class B>
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> mlp_backward(
    const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights, at::TensorList hidden,
    const at::Tensor& output, c10::ArrayRef<std::string> activations, bool log, const c10::List<bool>& output_mask) {
  const auto guard = B::guard(input);
  constexpr const char* op = "mlp_backward";
  const auto sym = check_mlp(op, B::kReducedPrecision, input, weights, nullptr, activations);
  check_mlp_hidden(op, input, sym, hidden);
  check_layer_output(op, input, sym.sizes.back(), "output", output);
  check_layer_output(op, input, sym.sizes.back(), "grad_output", grad_output);
  const MlpShape s = sym.concrete();
  const NetworkMask mask = network_mask(op, output_mask, weights.size(), 0);
  OutputGradient grad;
  grad.output = output.reshape({s.rows, s.sizes.back()}).contiguous();
  grad.grad_output = grad_output.reshape({s.rows, s.sizes.back()}).contiguous();
  grad.log = log;
  auto g = network_backward_2d<B>(grad, input.reshape({s.rows, s.sizes[0]}), make_network(weights, {}, activations),
                                  rows_2d(hidden, s.rows), mask);
  if (mask.input) g.input = g.input.view(input.sizes());
  return {g.input, g.weights, g.biases};
}

template <class B>
std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> mlp_nll(
    const at::Tensor& input, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
    const at::Tensor& target, c10::ArrayRef<std::string> activations, c10::string_view reduction) {
  const auto guard = B::guard(input);
  constexpr const char* op = "mlp_nll";
  const Reduction red = parse_reduction(reduction);
  auto b = biases.vec();
  const auto args = check_mlp_nll_args(op, B::kReducedPrecision, input, weights, b, target, activations, reduction);
  const MlpShape s = args.shape.concrete();
  const int64_t classes = s.sizes.back();
  auto [lp, hidden] = network_forward_2d<B>(input.reshape({s.rows, s.sizes[0]}),
                                            make_network(weights, std::move(b), activations), /*log=*/true);
  auto row_loss = B::nll_rows(op, lp, target_2d(target, s.rows, classes, args.is_index), args.is_index, nullptr);
  const auto lead = input.sizes().slice(0, input.dim() - 1);
  return {reduce_loss<B>(row_loss, red, lead, lp.scalar_type()), hidden_views(std::move(hidden), input),
          lp.view(linear_output_sizes(input, classes))};
}

template <class B>
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> mlp_nll_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, at::TensorList weights, at::TensorList hidden,
    const at::Tensor& log_probs, const at::Tensor& target, c10::ArrayRef<std::string> activations,
    c10::string_view reduction, const c10::List<bool>& output_mask) {
  const auto guard = B::guard(input);
  constexpr const char* op = "mlp_nll_backward";
  const Reduction red = parse_reduction(reduction);
  const auto sym = check_mlp(op, B::kReducedPrecision, input, weights, nullptr, activations);
  check_mlp_hidden(op, input, sym, hidden);
  check_layer_output(op, input, sym.sizes.back(), "log_probs", log_probs);
  const bool is_index = check_target(op, log_probs.sym_sizes(), input, target);
  check_grad_loss(op, grad_loss, input, input.sym_sizes().slice(0, input.dim() - 1), red);
  const MlpShape s = sym.concrete();
  const int64_t classes = s.sizes.back();
  const NetworkMask mask = network_mask(op, output_mask, weights.size(), 1);
  const bool want_target = output_mask.get(output_mask.size() - 1) && !is_index;
  at::Tensor gt = want_target ? at::empty({s.rows, classes}, log_probs.options()) : no_grad_placeholder(log_probs);
  OutputGradient grad;
  grad.nll = true;
  grad.output = log_probs.reshape({s.rows, classes}).contiguous();
  grad.grad_loss = grad_loss.contiguous();
  grad.target = target_2d(target, s.rows, classes, is_index);
  grad.is_index = is_index;
  grad.reduction = red;
  grad.grad_target = want_target ? &gt : nullptr;
  auto g = network_backward_2d<B>(grad, input.reshape({s.rows, s.sizes[0]}), make_network(weights, {}, activations),
                                  rows_2d(hidden, s.rows), mask);
  if (mask.input) g.input = g.input.view(input.sizes());
  if (want_target) gt = gt.view(log_probs.sizes());
  return {g.input, g.weights, g.biases, gt};
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
  FASTFFNN_REGISTER(mlp);
  FASTFFNN_REGISTER(mlp_backward);
  FASTFFNN_REGISTER(mlp_nll);
  FASTFFNN_REGISTER(mlp_nll_backward);
#undef FASTFFNN_REGISTER
}

}  // namespace fastffnn::ops
