// The fused single-pass work between fastffnn's matrix products, declared
// once for each backend: fastffnn::cpu (csrc/cpu/epilogues.cpp) and
// fastffnn::cuda (csrc/cuda/epilogues.cu), each backend's policy
// (csrc/cpu/backend.h, csrc/cuda/register_cuda.cpp) naming its own. Every matrix
// is contiguous (rows, n); column sums (bias
// gradients) are deterministic on both backends: partial sums per fixed chunk
// of rows, added in chunk order, never atomics.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "activation.h"

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

namespace fastffnn::cpu {
FASTFFNN_DECLARE_EPILOGUES
}  // namespace fastffnn::cpu

#ifdef FASTFFNN_WITH_CUDA
namespace fastffnn::cuda {
FASTFFNN_DECLARE_EPILOGUES
}  // namespace fastffnn::cuda
#endif
