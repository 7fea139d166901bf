// fastffnn::linear_act and its backward: h = act(x @ W^T + b).
// Forward: one matrix product, then one fused pass for bias + activation.
// Backward: one fused pass forming dz = dh * act'(h) and the bias gradient,
// then the two matrix products for the input and weight gradients.
#include <torch/library.h>

#include "../checks.h"
#include "../layers.h"
#include "device_guard.h"
#include "kernels.h"

namespace fastffnn {

at::Tensor linear_act(const at::Tensor& input, const at::Tensor& weight,
                      const c10::optional<at::Tensor>& bias, c10::string_view activation) {
  const auto guard = device_guard_for(input);
  const Activation act = parse_activation(activation);
  const auto s = check_linear("linear_act", "input", input, "weight", weight, "bias", bias);
  auto h = linear_act_2d(input.reshape({s.rows, s.in}), weight, bias, act);
  return h.view(linear_output_sizes(input, s.out));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& output, c10::string_view activation, std::array<bool, 3> output_mask) {
  const auto guard = device_guard_for(input);
  const Activation act = parse_activation(activation);
  return layer_backward("linear_act_backward", grad_output, input, weight, output, output_mask,
                        [act](const at::Tensor& dy, const at::Tensor& y, at::Tensor& dz,
                              at::Tensor* gb) { act_backward_2d(dy, y, act, dz, gb); });
}

static void register_kernels(torch::Library& m) {
  m.impl("linear_act", &linear_act);
  m.impl("linear_act_backward", &linear_act_backward);
}


FASTFFNN_IMPL(register_kernels)


}  // namespace fastffnn
