// fastffnn::ffnn and its backward: the lecture's whole network
// softmax(W(act(V(x)))) in one call each way.
// Forward: two matrix products, each followed by one fused epilogue pass; the
// hidden activations are returned for the backward.
// Backward: the softmax backward fused with W's bias gradient, then W's weight
// gradient, the hidden gradient with act' and V's bias gradient in one pass,
// and V's weight and the input gradients.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../checks.h"
#include "../layers.h"
#include "device_guard.h"
#include "kernels.h"

namespace fastffnn {

std::tuple<at::Tensor, at::Tensor> ffnn(const at::Tensor& input, const at::Tensor& V_weight,
                                        const c10::optional<at::Tensor>& V_bias,
                                        const at::Tensor& W_weight,
                                        const c10::optional<at::Tensor>& W_bias,
                                        c10::string_view activation, bool log) {
  const auto guard = device_guard_for(input);
  const Activation act = parse_activation(activation);
  const auto s = check_network("ffnn", input, V_weight, V_bias, W_weight, W_bias);
  auto [p, h] = ffnn_forward_2d(input.reshape({s.rows, s.in}), V_weight, V_bias, W_weight, W_bias, act, log);
  return {p.view(linear_output_sizes(input, s.out)), h.view(linear_output_sizes(input, s.hidden))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ffnn_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& V_weight,
    const at::Tensor& W_weight, const at::Tensor& hidden, const at::Tensor& output,
    c10::string_view activation, bool log, std::array<bool, 5> output_mask) {
  const auto guard = device_guard_for(input);
  constexpr const char* op = "ffnn_backward";
  const Activation act = parse_activation(activation);
  const auto s = check_network(op, input, V_weight, c10::nullopt, W_weight, c10::nullopt);
  check_layer_output(op, input, s.hidden, "hidden", hidden);
  check_layer_output(op, input, s.out, "output", output);
  check_layer_output(op, input, s.out, "grad_output", grad_output);

  OutputGradient grad;
  grad.output = output.reshape({s.rows, s.out}).contiguous();
  grad.grad_output = grad_output.reshape({s.rows, s.out}).contiguous();
  grad.log = log;
  auto grads = network_backward_2d(grad, input.reshape({s.rows, s.in}), V_weight, W_weight,
                                   hidden.reshape({s.rows, s.hidden}).contiguous(), act, output_mask);
  if (output_mask[0]) std::get<0>(grads) = std::get<0>(grads).view(input.sizes());
  return grads;
}

static void register_kernels(torch::Library& m) {
  m.impl("ffnn", &ffnn);
  m.impl("ffnn_backward", &ffnn_backward);
}


FASTFFNN_IMPL(register_kernels)


}  // namespace fastffnn
