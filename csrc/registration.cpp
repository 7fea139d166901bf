// The operator schemas of the `fastffnn` namespace. Each backend registers its
// kernels (csrc/ops.h) for its own dispatch key from its own folder
// (csrc/cpu/kernels.cpp, csrc/cuda/register_cuda.cpp); the first-order
// autograd of the forward ops and their differentiable backward formulas are in
// csrc/autograd.cpp, the argument checks in csrc/checks.cpp, and the fake
// (meta) kernels for torch.compile in fastffnn/_fake.py.
//
// Conventions shared by every op:
// * `input` has shape (..., in_features); a 1-D input is one example.
// * weights follow nn.Linear: (out_features, in_features); biases are optional.
// * *_backward ops take `output_mask`, one flag per differentiable input, and
//   return an empty tensor of shape [0] for every gradient that was not asked
//   for, so that no work is spent on it.
#include <torch/library.h>

TORCH_LIBRARY(fastffnn, m) {
  // h = activation(input @ weight^T + bias)
  m.def("linear_act(Tensor input, Tensor weight, Tensor? bias, str activation='tanh') -> Tensor");
  m.def(
      "linear_act_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor output, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // p = softmax(input @ weight^T + bias) over the last dim (log_softmax if log)
  m.def("linear_softmax(Tensor input, Tensor weight, Tensor? bias, bool log=False) -> Tensor");
  m.def(
      "linear_softmax_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor output, "
      "bool log, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");

  // Cross-entropy of softmax(logits) against class indices (integer target,
  // shape (...)) or probabilities (floating target, shape (..., classes)).
  // Also returns the per-row log-sum-exp, which is all the backward needs.
  m.def("softmax_nll(Tensor logits, Tensor target, str reduction='mean') -> (Tensor, Tensor)");
  m.def(
      "softmax_nll_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor lse, "
      "str reduction, bool[2] output_mask) -> (Tensor, Tensor)");

  // The whole network: softmax(W(g(V(input)))) (log_softmax if log). Also
  // returns the hidden activations, saved for the backward.
  m.def(
      "ffnn(Tensor input, Tensor V_weight, Tensor? V_bias, Tensor W_weight, Tensor? W_bias, "
      "str activation='tanh', bool log=False) -> (Tensor, Tensor)");
  m.def(
      "ffnn_backward(Tensor grad_output, Tensor input, Tensor V_weight, Tensor W_weight, "
      "Tensor hidden, Tensor output, str activation, bool log, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The whole network and its loss: the cross-entropy of softmax(W(g(V(input))))
  // against `target` (as softmax_nll). Returns (loss, hidden, log_probs); the
  // backward's sixth gradient is the target's (probability targets only).
  m.def(
      "ffnn_nll(Tensor input, Tensor V_weight, Tensor? V_bias, Tensor W_weight, Tensor? W_bias, "
      "Tensor target, str activation='tanh', str reduction='mean') -> (Tensor, Tensor, Tensor)");
  m.def(
      "ffnn_nll_backward(Tensor grad_loss, Tensor input, Tensor V_weight, Tensor W_weight, "
      "Tensor hidden, Tensor log_probs, Tensor target, str activation, str reduction, "
      "bool[6] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The network of any depth L >= 1: softmax(L_L(act_{L-1}(... act_1(L_1(input))))) (log_softmax if
  // log), with weights[k] (n_{k+1}, n_k) and biases[k] (n_{k+1},) or None for layer k, and one
  // activation per hidden layer (L - 1 of them). Also returns the hidden activations, saved for the
  // backward. ffnn is the case L = 2 of the same engine (csrc/ops.h).
  m.def(
      "mlp(Tensor input, Tensor[] weights, Tensor?[] biases, str[] activations, bool log=False) "
      "-> (Tensor, Tensor[])");
  // output_mask: [input, weights..., biases...]; returns (grad_input, grad_weights, grad_biases).
  m.def(
      "mlp_backward(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] hidden, Tensor output, "
      "str[] activations, bool log, bool[] output_mask) -> (Tensor, Tensor[], Tensor[])");
  // The network and its loss, as ffnn_nll: returns (loss, hidden, log_probs).
  m.def(
      "mlp_nll(Tensor input, Tensor[] weights, Tensor?[] biases, Tensor target, str[] activations, "
      "str reduction='mean') -> (Tensor, Tensor[], Tensor)");
  // output_mask: [input, weights..., biases..., target]; the target's gradient is for probability targets.
  m.def(
      "mlp_nll_backward(Tensor grad_loss, Tensor input, Tensor[] weights, Tensor[] hidden, Tensor log_probs, "
      "Tensor target, str[] activations, str reduction, bool[] output_mask) "
      "-> (Tensor, Tensor[], Tensor[], Tensor)");

  // The closed-form gradients of the forward ops composed of differentiable
  // ATen ops (CompositeImplicitAutograd): what a backward that records a
  // graph computes, so that double backward and torch.func transforms of a
  // gradient are exact. Arguments as the forward op's, after the gradient of
  // its first output; output_mask as the *_backward ops'.
  m.def(
      "linear_act_backward_differentiable(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "linear_softmax_backward_differentiable(Tensor grad_output, Tensor input, Tensor weight, Tensor? bias, "
      "bool log, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "softmax_nll_backward_differentiable(Tensor grad_loss, Tensor logits, Tensor target, str reduction, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
  m.def(
      "ffnn_backward_differentiable(Tensor grad_output, Tensor input, Tensor V_weight, Tensor? V_bias, "
      "Tensor W_weight, Tensor? W_bias, str activation, bool log, bool[5] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "ffnn_nll_backward_differentiable(Tensor grad_loss, Tensor input, Tensor V_weight, Tensor? V_bias, "
      "Tensor W_weight, Tensor? W_bias, Tensor target, str activation, str reduction, bool[6] output_mask) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The argument checks of each forward op (csrc/checks.h) and nothing else,
  // for the fake kernels (fastffnn/_fake.py): eager and torch.compile then
  // raise the same error for the same bad input.
  m.def("_check_linear_act(Tensor input, Tensor weight, Tensor? bias, str activation) -> ()");
  m.def("_check_linear_softmax(Tensor input, Tensor weight, Tensor? bias) -> ()");
  m.def("_check_softmax_nll(Tensor logits, Tensor target, str reduction) -> ()");
  m.def(
      "_check_ffnn(Tensor input, Tensor V_weight, Tensor? V_bias, Tensor W_weight, Tensor? W_bias, "
      "str activation) -> ()");
  m.def(
      "_check_ffnn_nll(Tensor input, Tensor V_weight, Tensor? V_bias, Tensor W_weight, Tensor? W_bias, "
      "Tensor target, str activation, str reduction) -> ()");
  m.def("_check_mlp(Tensor input, Tensor[] weights, Tensor?[] biases, str[] activations) -> ()");
  m.def(
      "_check_mlp_nll(Tensor input, Tensor[] weights, Tensor?[] biases, Tensor target, str[] activations, "
      "str reduction) -> ()");
  m.def(
      "_check_mlp_nll_adam_step_(Tensor input, Tensor target, Tensor[] params, bool has_bias, str[] activations, "
      "str reduction) -> ()");
  m.def(
      "_check_mlp_nll_sgd_step_(Tensor input, Tensor target, Tensor[] params, bool has_bias, str[] activations, "
      "str reduction) -> ()");
  // `op` names the fit op (mlp_nll_adam_fit_ or mlp_nll_sgd_fit_) in the errors
  m.def(
      "_check_mlp_nll_fit_(str op, Tensor input, Tensor target, Tensor order, int batch_size, Tensor[] params, "
      "bool has_bias, str[] activations, float alpha, bool maximize, bool decoupled_decay) -> ()");
  m.def(
      "_check_ffnn_nll_adam_step_(Tensor input, Tensor target, Tensor[] params, bool has_bias, str activation, "
      "str reduction) -> ()");

  // One Adam step over every parameter in one call, the update of
  // torch.optim.Adam (single-tensor form). `steps` are the per-parameter step
  // counters (0-d float32 tensors, as torch.optim.Adam keeps them), advanced
  // here; max_exp_avg_sqs is empty unless amsgrad.
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) -> ()");
  // The same with the learning rate as a one-element tensor, as torch.optim.Adam accepts it: an LR
  // scheduler then changes it in place, and a compiled step reads it as an input instead of baking it
  // in as a constant (which would recompile at every change).
  m.def(
      "adam_step_.tensor_lr(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
      "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, Tensor lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) -> ()");

  // A whole training step in one call: ffnn_nll forward and backward, then
  // adam_step_ on params = [V.weight, V.bias, W.weight, W.bias] (the biases
  // left out when has_bias is false). Returns the loss.
  m.def(
      "ffnn_nll_adam_step_(Tensor input, Tensor target, Tensor(a!)[] params, bool has_bias, "
      "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
      "str activation, str reduction, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool amsgrad, bool maximize, bool decoupled_weight_decay) -> Tensor");
  m.def(
      "ffnn_nll_adam_step_.tensor_lr(Tensor input, Tensor target, Tensor(a!)[] params, bool has_bias, "
      "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
      "str activation, str reduction, Tensor lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool amsgrad, bool maximize, bool decoupled_weight_decay) -> Tensor");

  // The training step of the network of any depth, as ffnn_nll_adam_step_: params are [weights[0],
  // biases[0], weights[1], biases[1], ...] (the biases left out when has_bias is false), with
  // len(activations) + 1 layers. ffnn_nll_adam_step_ is its case of one hidden layer.
  m.def(
      "mlp_nll_adam_step_(Tensor input, Tensor target, Tensor(a!)[] params, bool has_bias, "
      "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
      "str[] activations, str reduction, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool amsgrad, bool maximize, bool decoupled_weight_decay) -> Tensor");
  m.def(
      "mlp_nll_adam_step_.tensor_lr(Tensor input, Tensor target, Tensor(a!)[] params, bool has_bias, "
      "Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
      "str[] activations, str reduction, Tensor lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool amsgrad, bool maximize, bool decoupled_weight_decay) -> Tensor");

  // torch.optim.SGD's update (single-tensor form) over every parameter in one
  // call. momentum_buffers and fresh are empty without momentum; fresh[i]
  // says buffer i holds nothing yet (torch's None): the step then sets it to
  // the gradient, as torch.optim.SGD's first step does.
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, bool[] fresh, float lr, "
      "float momentum, float dampening, float weight_decay, bool nesterov, bool maximize) -> ()");
  // mlp_nll_adam_step_'s training step with sgd_step_'s update.
  m.def(
      "mlp_nll_sgd_step_(Tensor input, Tensor target, Tensor(a!)[] params, bool has_bias, "
      "Tensor(b!)[] momentum_buffers, bool[] fresh, str[] activations, str reduction, float lr, float momentum, "
      "float dampening, float weight_decay, bool nesterov, bool maximize) -> Tensor");

  // Many training steps in one call: the steps of mlp_nll_adam_step_ (or
  // mlp_nll_sgd_step_), reduction 'mean', over the rows of input (examples,
  // n_0) and target (examples,) or (examples, n_L), taken in the given order
  // batch_size at a time (the last batch smaller). Returns each step's loss,
  // (ceil(len(order) / batch_size),).
  //
  // alpha > 0 is scikit-learn's L2 penalty (MLPClassifier's alpha): a step on
  // a batch of r rows adds alpha / r * W to each weight's gradient (not the
  // biases') and 0.5 * alpha * sum(||W||^2) / r, with the weights before the
  // step, to its loss. eps_before_correction: scikit-learn's Adam, which adds
  // eps to sqrt(v) before the bias correction, where torch's adds it after.
  m.def(
      "mlp_nll_adam_fit_(Tensor input, Tensor target, Tensor order, int batch_size, Tensor(a!)[] params, "
      "bool has_bias, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, "
      "Tensor(e!)[] steps, str[] activations, float lr, float beta1, float beta2, float eps, float weight_decay, "
      "bool amsgrad, bool maximize, bool decoupled_weight_decay, float alpha=0., bool eps_before_correction=False) "
      "-> Tensor");
  m.def(
      "mlp_nll_sgd_fit_(Tensor input, Tensor target, Tensor order, int batch_size, Tensor(a!)[] params, "
      "bool has_bias, Tensor(b!)[] momentum_buffers, bool[] fresh, str[] activations, float lr, float momentum, "
      "float dampening, float weight_decay, bool nesterov, bool maximize, float alpha=0.) -> Tensor");
}
