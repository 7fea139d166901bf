// The fully fused CUDA tier for narrow networks (csrc/cuda/fused_mlp.cu), and
// the heuristic that picks it over the general tier (cuBLAS + epilogues).
#pragma once

#ifdef FASTFFNN_WITH_CUDA

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <utility>
#include <vector>

#include "../activation.h"
#include "../epilogues.h"

namespace fastffnn::cuda {

// Whether the fused tier runs the network `net` (2 to 16 layers) on a batch
// whose rows and dtype are those of `x`: a CUDA float32, float16 or bfloat16
// tensor, every hidden width 1..256, 1 <= classes <= 64, and both kernels'
// shared memory within the device's opt-in limit. Then the tier setting
// decides (FASTFFNN_CUDA_TIER, or fastffnn.set_cuda_tier): 'fused' always
// takes it, 'general' never, 'auto' (the default) by a prior on the batch and
// the work per block (fused_mlp.cu).
bool fused_tier_applies(const at::Tensor& x, const Network& net);

// (output, hidden activations) of the network for a contiguous-able x
// (rows, in), in one kernel: each hidden layer's activations stay on chip
// for the next layer.
std::pair<at::Tensor, std::vector<at::Tensor>> fused_network_forward(const at::Tensor& x, const Network& net,
                                                                     bool log);

// The backward's row-local work in one kernel, a tile of rows per block: the
// output layer's dz from `grad` (softmax or NLL), then each hidden layer's
// dz_k = (dz_{k+1} @ W_{k+1}) * act'(hidden[k]) down to layer `lowest`, the
// dz kept on chip from layer to layer, and the column sums of each into
// *grad_biases[k] where that is not null. Returns dz (entries below `lowest`
// undefined) for the weight and input gradients (cuBLAS).
std::vector<at::Tensor> fused_network_backward(const OutputGradient& grad, const Network& net,
                                               const std::vector<at::Tensor>& hidden, int lowest,
                                               std::vector<at::Tensor*> grad_biases);

}  // namespace fastffnn::cuda

#endif
