// The fully fused CUDA tier for narrow networks (csrc/cuda/fused_mlp.cu), and
// the heuristic that picks it over the general tier (cuBLAS + epilogues).
#pragma once

#ifdef FASTFFNN_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <utility>

#include "../activation.h"
#include "../epilogues.h"

namespace fastffnn::cuda {

// Whether the fused tier runs the network (in -> hidden -> classes) on a batch
// whose rows and dtype are those of `x`: a CUDA float32, float16 or bfloat16
// tensor, 1 <= hidden <= 256, 1 <= classes <= 64, and both kernels' shared
// memory within the device's opt-in limit. Then the tier setting decides
// (FASTFFNN_CUDA_TIER, or fastffnn.set_cuda_tier): 'fused' always takes it,
// 'general' never, 'auto' (the default) by a prior on the batch and the work
// per block (fused_mlp.cu).
bool fused_tier_applies(const at::Tensor& x, int64_t in, int64_t hidden, int64_t classes);

// (output, hidden) of softmax(W(act(V(x)))) (log_softmax if log) for a
// contiguous-able x (rows, in), in one kernel.
std::pair<at::Tensor, at::Tensor> fused_ffnn_forward(const at::Tensor& x, const at::Tensor& V_weight,
                                                     const c10::optional<at::Tensor>& V_bias,
                                                     const at::Tensor& W_weight,
                                                     const c10::optional<at::Tensor>& W_bias, Activation act,
                                                     bool log);

// The backward's row-local work in one kernel, a tile of rows per block:
// dz2 = dL/dz from `grad` (softmax or NLL), then dz1 = (dz2 @ W) *
// act'(hidden) (when need_dz1), with dz2 kept in shared memory in between,
// and the column sums of both into *grad_W_bias / *grad_V_bias when given.
// Returns (dz2, dz1) for the weight and input gradients (cuBLAS).
std::pair<at::Tensor, at::Tensor> fused_network_backward(const OutputGradient& grad, const at::Tensor& W_weight,
                                                         const at::Tensor& hidden, Activation act,
                                                         at::Tensor* grad_W_bias, at::Tensor* grad_V_bias,
                                                         bool need_dz1);

}  // namespace fastffnn::cuda

#endif
