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

  static c10::optional<std::pair<at::Tensor, at::Tensor>> ffnn_forward(
      const at::Tensor& x, const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
      const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias, Activation act, bool log) {
    if (fused_tier_applies(x, x.size(1), V_weight.size(0), W_weight.size(0)))
      return fused_ffnn_forward(x, V_weight, V_bias, W_weight, W_bias, act, log);
    return c10::nullopt;
  }

  // The fused tier's backward: one kernel forms dz2, dz1 and both bias
  // gradients; cuBLAS the weight and input gradients. Not for a probability
  // target's own gradient, which the general tier's NLL epilogue forms.
  static c10::optional<NetworkGrads> network_backward(const OutputGradient& grad, const at::Tensor& x,
                                                      const at::Tensor& V_weight, const at::Tensor& W_weight,
                                                      const at::Tensor& hidden, Activation act,
                                                      c10::ArrayRef<bool> mask) {
    const at::Tensor& y = grad.output;
    if (grad.grad_target != nullptr || !fused_tier_applies(y, x.size(1), hidden.size(1), y.size(1)))
      return c10::nullopt;
    const bool lower = mask[0] || mask[1] || mask[2];
    at::Tensor gWb = mask[4] ? at::empty({y.size(1)}, y.options()) : no_grad_placeholder(y);
    at::Tensor gVb = mask[2] ? at::empty({hidden.size(1)}, hidden.options()) : no_grad_placeholder(y);
    auto [dz2, dz1] = fused_network_backward(grad, W_weight, hidden, act, mask[4] ? &gWb : nullptr,
                                             mask[2] ? &gVb : nullptr, lower);
    at::Tensor gWw = mask[3] ? at::mm(dz2.t(), hidden) : no_grad_placeholder(y);
    auto [gx, gVw] = lower ? linear_backward_2d<Backend>(dz1, x, V_weight, mask[0], mask[1])
                           : std::pair<at::Tensor, at::Tensor>{no_grad_placeholder(y), no_grad_placeholder(y)};
    return NetworkGrads{gx, gVw, gVb, gWw, gWb};
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
