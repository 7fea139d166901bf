// The CPU's matrix products for a batch of one row (csrc/cpu/one_row.h says
// why they skip at::mm). The CPU backend (backend.h) uses them when one_row_applies().
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <utility>

#include "../activation.h"

namespace fastffnn::cpu {

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

// The whole network's forward for x (1, in): (softmax(W act(V x + b) + c), the
// hidden activations act(V x + b)), each a new contiguous (1, n). Needs
// contiguous weights; one native pass with two allocations, where the general
// path makes two products, two epilogue passes and their dispatches.
std::pair<at::Tensor, at::Tensor> ffnn_forward_one_row(const at::Tensor& x, const at::Tensor& V_weight,
                                                       const c10::optional<at::Tensor>& V_bias,
                                                       const at::Tensor& W_weight,
                                                       const c10::optional<at::Tensor>& W_bias, Activation act,
                                                       bool log);

}  // namespace fastffnn::cpu
