// The building blocks every fastffnn op is made of, on any backend. They work
// on 2-D (rows, features) matrices; the op entry points (csrc/ops/<op>.cpp)
// validate the arguments, flatten the leading dims and compose these.
//
// Matrix products go to at::mm (MKL / oneDNN on the CPU, cuBLAS on CUDA);
// each fused epilogue is one pass over its matrix, implemented per backend
// (csrc/epilogues.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>
#include <utility>

#include "activation.h"
#include "checks.h"

namespace fastffnn {

// act(x @ w^T + b) as a new contiguous (rows, out) matrix.
at::Tensor linear_act_2d(const at::Tensor& x, const at::Tensor& w,
                         const c10::optional<at::Tensor>& b, Activation act);

// softmax(x @ w^T + b) over each row (log_softmax if log), as a new (rows, out).
at::Tensor linear_softmax_2d(const at::Tensor& x, const at::Tensor& w,
                             const c10::optional<at::Tensor>& b, bool log);

// dz = dy * act'(y) for the saved activation output y, and, if grad_bias is
// not null, its column sums into *grad_bias (out,). dz may be dy itself.
void act_backward_2d(const at::Tensor& dy, const at::Tensor& y, Activation act, at::Tensor& dz,
                     at::Tensor* grad_bias);

// dz = gradient of the logits given the gradient dout of the softmax output
// y (log_softmax if log), and the column sums into *grad_bias if not null.
void softmax_backward_2d(const at::Tensor& dout, const at::Tensor& y, bool log, at::Tensor& dz,
                         at::Tensor* grad_bias);

// Gradients of a linear layer y = x @ w^T given dz = dL/dy:
// (dz @ w if need_input, dz^T @ x if need_weight); a gradient not asked for is
// an empty tensor of shape [0].
std::pair<at::Tensor, at::Tensor> linear_backward_2d(const at::Tensor& dz, const at::Tensor& x,
                                                     const at::Tensor& w, bool need_input,
                                                     bool need_weight);

// The three gradients (input, weight, bias) of one layer y = f(x @ w^T + b),
// given grad_output = dL/dy and the saved output y, both shaped like the
// layer's result for `input` (..., out). `epilogue_backward(dy, y, dz,
// grad_bias)` forms dz = dL/d(x @ w^T + b) in one pass (act_backward_2d or
// softmax_backward_2d). Validates every operand, naming `op`.
template <typename EpilogueBackward>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_backward(
    const char* op, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& output, std::array<bool, 3> output_mask,
    const EpilogueBackward& epilogue_backward);

// ----------------------------------------------------------------- the loss
// Row r of the log-probabilities is z[r] - shift[r]. softmax_nll passes the
// logits and computes shift = logsumexp into `lse`; ffnn_nll passes
// log-probabilities that are already normalised, and no lse (shift = 0).
// `target` is int64 class indices (rows,) if is_index, else probabilities
// (rows, classes); both contiguous. Returns the per-row losses (rows,), and
// writes lse, in the compute type (at::toOpMathType: float for float16 and
// bfloat16 inputs), so that the backward rebuilds softmax exactly.
at::Tensor nll_rows_2d(const char* op, const at::Tensor& z, const at::Tensor& target,
                       bool is_index, at::Tensor* lse);

// The target as the kernels read it: contiguous int64 (rows,) class indices,
// or contiguous (rows, classes) probabilities.
at::Tensor target_2d(const at::Tensor& target, int64_t rows, int64_t classes, bool is_index);

// Reduces per-row losses (in the inputs' compute type, see nll_rows_2d) to
// the loss in `dtype`: 'none' keeps them, shaped `lead`; 'sum' and 'mean' add
// them in a fixed order in double precision.
at::Tensor reduce_loss(const at::Tensor& row_loss, Reduction reduction, at::IntArrayRef lead,
                       at::ScalarType dtype);

// dL/dz for the loss above given grad_loss (shaped `lead` for 'none', a
// scalar otherwise): weight_r * (sum(y_r) * p_r - y_r) with p_r = exp(z_r -
// shift_r). Also the bias gradient (column sums of dz) if grad_bias is not
// null, and the target's gradient -weight_r * log(p_r) if grad_target is not
// null (probability targets only).
at::Tensor nll_backward_2d(const at::Tensor& grad_loss, const at::Tensor& z,
                           const c10::optional<at::Tensor>& shift, const at::Tensor& target,
                           bool is_index, Reduction reduction, at::Tensor* grad_bias,
                           at::Tensor* grad_target);

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

// (output, hidden) of the network softmax(W(act(V(x)))) (log_softmax if
// log): on CUDA, the fused tier when it applies (csrc/fused_tier.h); else
// linear_act_2d then linear_softmax_2d.
std::pair<at::Tensor, at::Tensor> ffnn_forward_2d(const at::Tensor& x, const at::Tensor& V_weight,
                                                  const c10::optional<at::Tensor>& V_bias,
                                                  const at::Tensor& W_weight,
                                                  const c10::optional<at::Tensor>& W_bias, Activation act,
                                                  bool log);

// The five gradients of the network softmax(W(act(V(x)))) given dz2, the
// gradient of the output layer's pre-activation: (input, V.weight, V.bias,
// W.weight, W.bias). grad_W_bias, if asked for, has been formed with dz2 and
// is passed through. Entries whose mask is false are empty tensors [0].
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backprop_network_2d(
    const at::Tensor& dz2, const at::Tensor& x, const at::Tensor& V_weight,
    const at::Tensor& W_weight, const at::Tensor& hidden, Activation act,
    c10::ArrayRef<bool> mask, at::Tensor grad_W_bias);

// The five gradients of the network (input, V.weight, V.bias, W.weight,
// W.bias) from its output gradient: on CUDA, the fused tier when it applies
// (one kernel forms dz2, dz1 and both bias gradients; cuBLAS the rest);
// otherwise the output-layer epilogue, then backprop_network_2d.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> network_backward_2d(
    const OutputGradient& grad, const at::Tensor& x, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& hidden, Activation act, c10::ArrayRef<bool> mask);

// An empty tensor of shape [0]: the placeholder for a gradient not asked for.
at::Tensor no_grad_placeholder(const at::Tensor& like);

// ------------------------------------------------------------ templates
template <typename EpilogueBackward>
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_backward(
    const char* op, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& output, std::array<bool, 3> output_mask,
    const EpilogueBackward& epilogue_backward) {
  const auto s = check_linear(op, "input", input, "weight", weight, "bias", c10::nullopt);
  check_layer_output(op, input, s.out, "output", output);
  check_layer_output(op, input, s.out, "grad_output", grad_output);

  const auto y = output.reshape({s.rows, s.out}).contiguous();
  const auto dy = grad_output.reshape({s.rows, s.out}).contiguous();
  auto dz = at::empty_like(y);
  at::Tensor gb = output_mask[2] ? at::empty({s.out}, y.options()) : no_grad_placeholder(y);
  epilogue_backward(dy, y, dz, output_mask[2] ? &gb : nullptr);
  auto [gx, gw] = linear_backward_2d(dz, input.reshape({s.rows, s.in}), weight, output_mask[0],
                                     output_mask[1]);
  if (output_mask[0]) gx = gx.view(input.sizes());
  return {gx, gw, gb};
}

}  // namespace fastffnn
