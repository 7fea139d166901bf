// The fused single-pass work between fastffnn's matrix products, declared
// once for each backend: fastffnn::cpu (csrc/cpu/kernels.cpp) and
// fastffnn::cuda (csrc/cuda/epilogues.cu), each backend's policy
// (csrc/cpu/backend.h, csrc/cuda/register_cuda.cpp) naming its own. Every matrix
// is contiguous (rows, n); column sums (bias
// gradients) are deterministic on both backends: partial sums per fixed chunk
// of rows, added in chunk order, never atomics.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "activation.h"

#include <tuple>
#include <vector>

// One list, so the backends cannot drift apart.
#define FASTFFNN_DECLARE_EPILOGUES                                                                 \
  /* z = act(z + b) in place; b may be absent. */                                                  \
  void bias_act_(at::Tensor& z, const c10::optional<at::Tensor>& b, Activation act);               \
  /* z = softmax(z + b) over each row in place (log_softmax if log), max-subtracted. */           \
  void bias_softmax_(at::Tensor& z, const c10::optional<at::Tensor>& b, bool log);                 \
  /* dz = dy * act'(y); column sums of dz into *grad_bias if not null. dz may be dy. */            \
  void act_backward(const at::Tensor& dy, const at::Tensor& y, Activation act, at::Tensor& dz,     \
                    at::Tensor* grad_bias);                                                        \
  /* dz = the logits' gradient given dout = dL/dy for y = (log_)softmax; bias sums as above. */   \
  void softmax_backward(const at::Tensor& dout, const at::Tensor& y, bool log, at::Tensor& dz,     \
                        at::Tensor* grad_bias);                                                    \
  /* Per-row cross-entropy of log p = z - shift (shift = logsumexp(z) into *lse when lse is    */ \
  /* given, else 0); target: int64 (rows,) class indices or (rows, n) probabilities.           */ \
  at::Tensor nll_rows(const char* op, const at::Tensor& z, const at::Tensor& target,             \
                      bool is_index, at::Tensor* lse);                                             \
  /* dL/dz = w_r * (sum(y_r) * exp(z_r - shift_r) - y_r), plus bias and target gradients. */      \
  at::Tensor nll_backward(const at::Tensor& grad_loss, const at::Tensor& z,                        \
                          const c10::optional<at::Tensor>& shift, const at::Tensor& target,        \
                          bool is_index, Reduction reduction, at::Tensor* grad_bias,               \
                          at::Tensor* grad_target);                                                \
  /* 'none' keeps the per-row losses; 'sum'/'mean' add them in a fixed order. */                   \
  at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction);

namespace fastffnn {

// What a backend's whole-network backward (its network_backward, csrc/ops.h)
// takes and returns.
// Where the output layer's gradient dz2 = dL/dz (z the logits) comes from:
// softmax's output and its gradient (ffnn), or the NLL loss of log-softmax
// output against a target (ffnn_nll). All matrices 2-D and contiguous.
struct OutputGradient {
  bool nll = false;
  at::Tensor output;       // (rows, classes): probabilities, or log-probabilities if log or nll
  at::Tensor grad_output;  // softmax: dL/d(output)
  bool log = false;        // softmax: the output is log_softmax
  at::Tensor grad_loss;    // nll: dL/d(loss), per row for reduction 'none'
  at::Tensor target;       // nll: int64 (rows,) class indices or (rows, classes) probabilities
  bool is_index = false;
  Reduction reduction = Reduction::Mean;
  at::Tensor* grad_target = nullptr;  // nll with probability targets: where the target's gradient goes
};

// A network of L >= 1 layers, the input (rows, n_0) to the logits (rows, n_L):
// weights[k] is (n_{k+1}, n_k) as in nn.Linear, biases[k] is (n_{k+1},) or
// absent, and acts[k] follows layer k < L - 1 (the hidden layers). The
// backward ops know no biases: `biases` is then empty.
struct Network {
  std::vector<at::Tensor> weights;
  std::vector<c10::optional<at::Tensor>> biases;
  std::vector<Activation> acts;

  size_t depth() const { return weights.size(); }
  c10::optional<at::Tensor> bias(size_t k) const { return biases.empty() ? c10::nullopt : biases[k]; }
};

// Which of a network's gradients to form, and the gradients themselves;
// weights[k] and biases[k] are layer k's. An entry not asked for is an empty
// placeholder of shape [0].
struct NetworkMask {
  bool input = false;
  std::vector<bool> weights, biases;

  // Whether anything below layer k (its input, or a parameter of a layer < k) is asked for.
  bool below(size_t k) const {
    if (input) return true;
    for (size_t j = 0; j < k; ++j)
      if (weights[j] || biases[j]) return true;
    return false;
  }
};
struct NetworkGradients {
  at::Tensor input;
  std::vector<at::Tensor> weights, biases;
};

}  // namespace fastffnn

namespace fastffnn::cpu {
FASTFFNN_DECLARE_EPILOGUES
}  // namespace fastffnn::cpu

#ifdef FASTFFNN_WITH_CUDA
namespace fastffnn::cuda {
FASTFFNN_DECLARE_EPILOGUES
}  // namespace fastffnn::cuda
#endif
