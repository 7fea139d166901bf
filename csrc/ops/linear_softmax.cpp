// fastffnn::linear_softmax and its backward:
// p = softmax(x @ W^T + b) over the last dim (log_softmax if `log`).
// Forward: one matrix product, then one fused row pass for bias + softmax.
// Backward: one fused pass forming the logits' gradient and the bias
// gradient, then the two matrix products.
#include <torch/library.h>

#include "../checks.h"
#include "../layers.h"
#include "device_guard.h"
#include "kernels.h"

namespace fastffnn {

at::Tensor linear_softmax(const at::Tensor& input, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias, bool log) {
  const auto guard = device_guard_for(input);
  const auto s = check_linear("linear_softmax", "input", input, "weight", weight, "bias", bias);
  auto p = linear_softmax_2d(input.reshape({s.rows, s.in}), weight, bias, log);
  return p.view(linear_output_sizes(input, s.out));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_softmax_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& output, bool log, std::array<bool, 3> output_mask) {
  const auto guard = device_guard_for(input);
  return layer_backward("linear_softmax_backward", grad_output, input, weight, output, output_mask,
                        [log](const at::Tensor& dy, const at::Tensor& y, at::Tensor& dz,
                              at::Tensor* gb) { softmax_backward_2d(dy, y, log, dz, gb); });
}

static void register_kernels(torch::Library& m) {
  m.impl("linear_softmax", &linear_softmax);
  m.impl("linear_softmax_backward", &linear_softmax_backward);
}


FASTFFNN_IMPL(register_kernels)


}  // namespace fastffnn
