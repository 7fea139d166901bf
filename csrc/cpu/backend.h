// The CPU backend (csrc/ops.h says what a backend provides): its strategy
// for the products and the whole network.
//
// A batch of one row (the lecture's one example at a time) takes the direct
// loops of row_ops.h, for each product and for the whole forward network in
// one pass; a small batch takes the register-blocked products of row_ops.h,
// and anything larger at::mm (MKL / oneDNN); either is followed by one
// vectorised epilogue pass (kernels.cpp over row_ops.h).
#pragma once

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/core/DeviceGuard.h>

#include "../epilogues.h"

namespace fastffnn::cpu {

// ------------------------------------------ the one-row products (kernels.cpp)
// row_ops.h says why they skip at::mm.

// Whether a product whose left operand is the (rows, k) matrix `x` can take
// the one-row loops: a CPU matrix with one row (and, for the products that
// read a weight matrix `w`, a contiguous w).
bool one_row_applies(const at::Tensor& x);
bool one_row_applies(const at::Tensor& x, const at::Tensor& w);

// x @ w^T for x (1, in) and w (out, in): a new contiguous (1, out).
at::Tensor linear_one_row(const at::Tensor& x, const at::Tensor& w);

// dz @ w for dz (1, out) and w (out, in): the input gradient, (1, in).
at::Tensor input_grad_one_row(const at::Tensor& dz, const at::Tensor& w);

// dz^T @ x for dz (1, out) and x (1, in): the weight gradient, (out, in).
at::Tensor weight_grad_one_row(const at::Tensor& dz, const at::Tensor& x);

// The whole network's forward for x (1, n_0): (softmax of the logits, the
// hidden activations), each a new contiguous (1, n). Needs contiguous
// weights; one native pass with one allocation per layer, where the general
// path makes a product, an epilogue pass and their dispatches per layer.
std::pair<at::Tensor, std::vector<at::Tensor>> network_forward_one_row(const at::Tensor& x, const Network& net,
                                                                       bool log);

// ------------------------------------------ the small-batch products (kernels.cpp)
// A batch of 2 to kSmallBatch rows takes the register-blocked loops of
// row_ops.h, which beat MKL's at::mm here by 1.3-2.5x (row_ops.h says
// why); larger batches take at::mm. So does a larger batch through a narrow
// layer, of at most kNarrowOut outputs (a classifier's last layer) and at most
// kNarrowWork multiply-adds: MKL spends 10-25 us on each of that layer's three
// products at batch 200, (200, 64 or 100) x (10 outputs), where the loops take
// 3-10 (measured on the project's VM, 2026-11-29). Each needs float32/float64
// and unit column strides where the loops read whole vectors.
constexpr int64_t kSmallBatch = 64;
constexpr int64_t kNarrowOut = 12;
constexpr int64_t kNarrowWork = int64_t{1} << 20;

bool small_linear_applies(const at::Tensor& x, const at::Tensor& w);
bool small_input_grad_applies(const at::Tensor& dz, const at::Tensor& w);
bool small_weight_grad_applies(const at::Tensor& dz, const at::Tensor& x);

// x @ w^T, dz @ w and dz^T @ x: each a new contiguous matrix.
at::Tensor linear_small(const at::Tensor& x, const at::Tensor& w);
at::Tensor input_grad_small(const at::Tensor& dz, const at::Tensor& w);
at::Tensor weight_grad_small(const at::Tensor& dz, const at::Tensor& x);

// ------------------------------------------------------------ the policy

struct Backend {
  static constexpr bool kReducedPrecision = false;  // float16/bfloat16 compute only on CUDA

  static c10::OptionalDeviceGuard guard(const at::Tensor&) { return c10::OptionalDeviceGuard(); }

  static at::Tensor linear(const at::Tensor& x, const at::Tensor& w) {
    if (one_row_applies(x, w)) return linear_one_row(x, w);
    if (small_linear_applies(x, w)) return linear_small(x, w);
    auto z = at::empty({x.size(0), w.size(0)}, x.options());
    if (z.numel() != 0) at::mm_out(z, x, w.t());
    return z;
  }
  static at::Tensor input_grad(const at::Tensor& dz, const at::Tensor& w) {
    if (one_row_applies(dz, w)) return input_grad_one_row(dz, w);
    return small_input_grad_applies(dz, w) ? input_grad_small(dz, w) : at::mm(dz, w);
  }
  // An empty inner dimension gives zeros (at::mm and the small loops alike):
  // right for an empty batch.
  static at::Tensor weight_grad(const at::Tensor& dz, const at::Tensor& x) {
    if (one_row_applies(dz)) return weight_grad_one_row(dz, x);
    return small_weight_grad_applies(dz, x) ? weight_grad_small(dz, x) : at::mm(dz.t(), x);
  }

  static constexpr auto bias_act_ = &cpu::bias_act_;
  static constexpr auto bias_softmax_ = &cpu::bias_softmax_;
  static constexpr auto act_backward = &cpu::act_backward;
  static constexpr auto softmax_backward = &cpu::softmax_backward;
  static constexpr auto nll_rows = &cpu::nll_rows;
  static constexpr auto nll_backward = &cpu::nll_backward;
  static constexpr auto reduce_loss = &cpu::reduce_loss;

  static c10::optional<std::pair<at::Tensor, std::vector<at::Tensor>>> network_forward(const at::Tensor& x,
                                                                                      const Network& net, bool log) {
    if (!one_row_applies(x)) return c10::nullopt;
    for (const auto& w : net.weights)
      if (!w.is_contiguous()) return c10::nullopt;
    return network_forward_one_row(x, net, log);
  }
  static c10::optional<NetworkGradients> network_backward(const OutputGradient&, const at::Tensor&, const Network&,
                                                          const std::vector<at::Tensor>&, const NetworkMask&) {
    return c10::nullopt;
  }
};

}  // namespace fastffnn::cpu

