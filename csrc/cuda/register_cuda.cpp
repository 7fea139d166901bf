// The CUDA backend (csrc/ops.h says what a backend provides) and the
// registration of every op's kernel (csrc/ops.h) with it.
//
// Strategy: the network ops take the fused tier (fused_mlp.cu: the whole
// forward, or the backward's row-local work, in one kernel with the hidden
// activations kept on chip) where fused_tier_applies() says it pays;
// everything else is the general tier: cuBLAS through at::mm, then one
// epilogue kernel (epilogues.cu). All on the current stream of the input's
// device, which the guard makes current.
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include "../epilogues.h"
#include "../ops.h"
#include "fused_tier.h"

namespace fastffnn::cuda {
namespace {

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

  // The fused tier is written for one hidden layer (the lecture's network);
  // deeper networks take the general tier.
  static c10::optional<std::pair<at::Tensor, std::vector<at::Tensor>>> network_forward(const at::Tensor& x,
                                                                                      const Network& net, bool log) {
    if (net.depth() != 2) return c10::nullopt;
    const at::Tensor &V_weight = net.weights[0], &W_weight = net.weights[1];
    if (!fused_tier_applies(x, x.size(1), V_weight.size(0), W_weight.size(0))) return c10::nullopt;
    auto [p, h] = fused_ffnn_forward(x, V_weight, net.bias(0), W_weight, net.bias(1), net.acts[0], log);
    return std::pair<at::Tensor, std::vector<at::Tensor>>{std::move(p), {std::move(h)}};
  }

  // The fused tier's backward: one kernel forms dz2, dz1 and both bias
  // gradients; cuBLAS the weight and input gradients. Not for a probability
  // target's own gradient, which the general tier's NLL epilogue forms.
  static c10::optional<NetworkGradients> network_backward(const OutputGradient& grad, const at::Tensor& x,
                                                          const Network& net, const std::vector<at::Tensor>& hiddens,
                                                          const NetworkMask& mask) {
    const at::Tensor& y = grad.output;
    if (net.depth() != 2 || grad.grad_target != nullptr) return c10::nullopt;
    const at::Tensor &V_weight = net.weights[0], &hidden = hiddens[0];
    if (!fused_tier_applies(y, x.size(1), hidden.size(1), y.size(1))) return c10::nullopt;
    NetworkGradients g = network_gradients(net, mask, y);
    const bool lower = mask.below(1);
    auto [dz2, dz1] = fused_network_backward(grad, net.weights[1], hidden, net.acts[0],
                                             mask.biases[1] ? &g.biases[1] : nullptr,
                                             mask.biases[0] ? &g.biases[0] : nullptr, lower);
    if (mask.weights[1]) g.weights[1] = at::mm(dz2.t(), hidden);
    if (lower) std::tie(g.input, g.weights[0]) = linear_backward_2d<Backend>(dz1, x, V_weight, mask.input, mask.weights[0]);
    return g;
  }
};

}  // namespace
}  // namespace fastffnn::cuda

// The emulated build (csrc/cuda/emulation/) has no CUDA tensors: it registers
// this backend for CPU tensors, whose kernels then run under the emulator.
#ifdef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) { fastffnn::ops::register_kernels<fastffnn::cuda::Backend>(m); }
#else
TORCH_LIBRARY_IMPL(fastffnn, CUDA, m) { fastffnn::ops::register_kernels<fastffnn::cuda::Backend>(m); }
#endif
