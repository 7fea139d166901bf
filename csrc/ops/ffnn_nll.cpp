// fastffnn::ffnn_nll and its backward: the whole network and its
// cross-entropy loss, so a training step is one native call forward and one
// backward. The output layer produces log-probabilities directly (never
// log(p)); the backward starts from exp(log_probs) - y, fused with W's bias
// gradient, and continues as ffnn_backward.
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../checks.h"
#include "../layers.h"
#include "device_guard.h"
#include "kernels.h"

namespace fastffnn {

std::tuple<at::Tensor, at::Tensor, at::Tensor> ffnn_nll(
    const at::Tensor& input, const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
    const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias, const at::Tensor& target,
    c10::string_view activation, c10::string_view reduction) {
  const auto guard = device_guard_for(input);
  constexpr const char* op = "ffnn_nll";
  const Activation act = parse_activation(activation);
  const Reduction red = parse_reduction(reduction);
  const auto s = check_network(op, input, V_weight, V_bias, W_weight, W_bias);
  TORCH_CHECK_VALUE(s.out >= 1, "fastffnn.", op, ": the network needs at least one class, got ",
                    "W_weight of shape ", W_weight.sizes());
  const auto out_sizes = linear_output_sizes(input, s.out);
  const bool is_index = check_target(op, out_sizes, input, target);

  auto [lp, h] =
      ffnn_forward_2d(input.reshape({s.rows, s.in}), V_weight, V_bias, W_weight, W_bias, act, /*log=*/true);
  auto row_loss = nll_rows_2d(op, lp, target_2d(target, s.rows, s.out, is_index), is_index, nullptr);
  const auto lead = input.sizes().slice(0, input.dim() - 1);
  return {reduce_loss(row_loss, red, lead, lp.scalar_type()), h.view(linear_output_sizes(input, s.hidden)),
          lp.view(out_sizes)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
ffnn_nll_backward(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& V_weight,
                  const at::Tensor& W_weight, const at::Tensor& hidden, const at::Tensor& log_probs,
                  const at::Tensor& target, c10::string_view activation,
                  c10::string_view reduction, std::array<bool, 6> output_mask) {
  const auto guard = device_guard_for(input);
  constexpr const char* op = "ffnn_nll_backward";
  const Activation act = parse_activation(activation);
  const Reduction red = parse_reduction(reduction);
  const auto s = check_network(op, input, V_weight, c10::nullopt, W_weight, c10::nullopt);
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
  auto [gx, gVw, gVb, gWw, gWb_out] =
      network_backward_2d(grad, input.reshape({s.rows, s.in}), V_weight, W_weight,
                          hidden.reshape({s.rows, s.hidden}).contiguous(), act,
                          c10::ArrayRef<bool>(output_mask.data(), 5));
  if (output_mask[0]) gx = gx.view(input.sizes());
  if (want_target) gt = gt.view(log_probs.sizes());
  return {gx, gVw, gVb, gWw, gWb_out, gt};
}

static void register_kernels(torch::Library& m) {
  m.impl("ffnn_nll", &ffnn_nll);
  m.impl("ffnn_nll_backward", &ffnn_nll_backward);
}


FASTFFNN_IMPL(register_kernels)


}  // namespace fastffnn
