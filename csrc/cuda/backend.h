// The CUDA backend (csrc/ops.h says what a backend provides): its strategy.
//
// The network ops of 2 to 16 layers take the fused tier (fused_mlp.cu: the
// whole forward, or the backward's row-local work, in one kernel with every
// hidden layer's activations kept on chip) where fused_tier_applies() says it
// pays; everything else is the general tier: cuBLAS through at::mm, then one
// epilogue kernel (epilogues.cu). All on the current stream of the input's
// device, which the guard makes current. register_cuda.cpp registers it for
// every op; train_cuda.cpp runs whole training steps on it.
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/core/DeviceGuard.h>

#include "../epilogues.h"
#include "fused_tier.h"

namespace fastffnn::cuda {

struct Backend {
  static constexpr bool kReducedPrecision = true;  // float16/bfloat16, computed in float32

  static c10::OptionalDeviceGuard guard(const at::Tensor& t) {
    return t.is_cpu() ? c10::OptionalDeviceGuard() : c10::OptionalDeviceGuard(t.device());
  }

  static at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
    auto z = at::empty({x.size(0), w.size(0)}, x.options());
    if (z.numel() != 0) at::mm_out(z, x, w.t());
    return z;
  }
  static at::Tensor input_grad(const at::Tensor& dz, const at::Tensor& w) { return at::mm(dz, w); }
  // at::mm with an empty inner dimension returns zeros: right for an empty batch.
  static at::Tensor weight_grad(const at::Tensor& dz, const at::Tensor& x) { return at::mm(dz.t(), x); }

  static constexpr auto bias_act_ = &cuda::bias_act_;
  static constexpr auto bias_softmax_ = &cuda::bias_softmax_;
  static constexpr auto act_backward = &cuda::act_backward;
  static constexpr auto softmax_backward = &cuda::softmax_backward;
  static constexpr auto nll_rows = &cuda::nll_rows;
  static constexpr auto nll_backward = &cuda::nll_backward;
  static constexpr auto reduce_loss = &cuda::reduce_loss;

  static c10::optional<std::pair<at::Tensor, std::vector<at::Tensor>>> network_forward(const at::Tensor& x,
                                                                                      const Network& net, bool log) {
    if (!fused_tier_applies(x, net)) return c10::nullopt;
    return fused_network_forward(x, net, log);
  }

  // The fused tier's backward: one kernel forms every layer's dz and bias
  // gradient from the top down to the lowest layer anything is asked of;
  // cuBLAS the weight and input gradients. Not for a probability target's
  // own gradient, which the general tier's NLL epilogue forms.
  static c10::optional<NetworkGradients> network_backward(const OutputGradient& grad, const at::Tensor& x,
                                                          const Network& net, const std::vector<at::Tensor>& hidden,
                                                          const NetworkMask& mask) {
    if (grad.grad_target != nullptr || !fused_tier_applies(grad.output, net)) return c10::nullopt;
    const int depth = static_cast<int>(net.depth());
    int lowest = depth - 1;  // the lowest layer whose dz anything needs
    while (lowest > 0 && (mask.weights[lowest - 1] || mask.biases[lowest - 1] || mask.below(lowest - 1))) --lowest;
    NetworkGradients g = network_gradients(net, mask, grad.output);
    std::vector<at::Tensor*> grad_biases;
    for (int k = 0; k < depth; ++k) grad_biases.push_back(mask.biases[k] && k >= lowest ? &g.biases[k] : nullptr);
    const auto dz = fused_network_backward(grad, net, hidden, lowest, grad_biases);
    for (int k = lowest; k < depth; ++k)
      if (mask.weights[k]) g.weights[k] = at::mm(dz[k].t(), k == 0 ? x : hidden[k - 1]);
    if (mask.input) g.input = at::mm(dz[0], net.weights[0]);
    return g;
  }
};


}  // namespace fastffnn::cuda
