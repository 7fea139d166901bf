// Argument validation shared by every backend and by the fake kernels. Each
// check names the op, the argument and the sizes involved, and raises
// TypeError (TORCH_CHECK_TYPE) for a wrong dtype and ValueError
// (TORCH_CHECK_VALUE) for a wrong shape or device, so that bad input never
// reaches a kernel.
//
// The checks read only metadata, and read sizes as SymInts, so that they run
// unchanged on the FakeTensors of torch.compile, symbolic shapes included: the
// forward ops' argument checks at the end of this file are what the kernels
// (csrc/ops.h) call first, and what the fake kernels (fastffnn/_fake.py) call
// through the ops fastffnn::_check_<op>. Eager and compiled code therefore
// fail with the same error for the same bad input.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>
#include <utility>
#include <vector>

#include "activation.h"

namespace fastffnn {

// The sizes of one linear layer applied to an input of shape (..., in).
struct LinearShape {
  int64_t rows;  // product of the leading dims of the input (1 for a 1-D input)
  int64_t in;
  int64_t out;
};
struct SymLinearShape {
  c10::SymInt rows, in, out;
  LinearShape concrete() const { return {rows.expect_int(), in.expect_int(), out.expect_int()}; }
};

// A floating input fastffnn computes in: float32 or float64, and where the
// backend takes them (`reduced_precision`: CUDA) also float16 or bfloat16,
// computed in float32 between the matrix products.
void check_floating(const char* op, bool reduced_precision, const char* name, const at::Tensor& t);

// `t` has the same dtype and device as `ref` (named `ref_name`).
void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref);

// Validates a layer's weight (out, in) and optional bias (out,) against the
// `in` features of `in_name`, and against the dtype and device of `ref`, the
// op's input; returns `out`.
c10::SymInt check_layer(const char* op, const char* in_name, const at::Tensor& ref, const c10::SymInt& in,
                        const char* weight_name, const at::Tensor& weight, const char* bias_name,
                        const c10::optional<at::Tensor>& bias);

// Validates input (..., in), weight (out, in) and an optional bias (out,).
SymLinearShape check_linear(const char* op, bool reduced_precision, const char* input_name,
                            const at::Tensor& input, const char* weight_name, const at::Tensor& weight,
                            const char* bias_name, const c10::optional<at::Tensor>& bias);

// `t` (named `name`) is shaped and typed like a layer's result for `input`:
// the input's leading dims, then `out`.
void check_layer_output(const char* op, const at::Tensor& input, const c10::SymInt& out, const char* name,
                        const at::Tensor& t);

// The sizes of the network softmax(W(act(V(input)))).
struct NetworkShape {
  int64_t rows, in, hidden, out;
};
struct SymNetworkShape {
  c10::SymInt rows, in, hidden, out;
  NetworkShape concrete() const {
    return {rows.expect_int(), in.expect_int(), hidden.expect_int(), out.expect_int()};
  }
};

// Validates input (..., in), V_weight (hidden, in), W_weight (out, hidden)
// and their optional biases.
SymNetworkShape check_network(const char* op, bool reduced_precision, const at::Tensor& input, const at::Tensor& V_weight,
                           const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                           const c10::optional<at::Tensor>& W_bias);

// Validates a loss target against logits of shape `logits_shape` (...,
// classes) whose dtype and device are those of `logits`. Returns true for
// class indices (an integer tensor of shape (...)) and false for probabilities
// (a floating tensor of the logits' shape and dtype). Index values are
// range-checked where the kernels read them.
bool check_target(const char* op, c10::SymIntArrayRef logits_shape, const at::Tensor& logits,
                  const at::Tensor& target);

// The loss's gradient `grad_loss` has the per-row shape `lead` for reduction
// 'none' and is a scalar otherwise.
void check_grad_loss(const char* op, const at::Tensor& grad_loss, const at::Tensor& ref,
                     c10::SymIntArrayRef lead, Reduction reduction);

// Shape of the result of a linear layer: the input's leading dims, then `out`.
std::vector<int64_t> linear_output_sizes(const at::Tensor& input, int64_t out);
std::vector<c10::SymInt> sym_linear_output_sizes(const at::Tensor& input, const c10::SymInt& out);

// Raises IndexError naming the offending target value and the class count.
void check_class_index(const char* op, int64_t value, int64_t classes);

// ------------------------------------------ the forward ops' argument checks
// Everything a forward op validates before it computes, in the order the op
// validates it. `reduced_precision`: whether the backend for the input's device
// computes in float16/bfloat16 (reduced_precision_on says so for the fake).

// linear_act and linear_softmax (activation is null for linear_softmax).
SymLinearShape check_linear_args(const char* op, bool reduced_precision, const at::Tensor& input,
                                 const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 const c10::string_view* activation);

// Validates logits (..., classes) with at least one class; returns (rows, classes).
std::pair<c10::SymInt, c10::SymInt> check_logits(const char* op, bool reduced_precision, const at::Tensor& logits);

struct LossArgs {
  c10::SymInt rows, classes;
  bool is_index;  // class indices, or else probabilities
};
LossArgs check_softmax_nll_args(bool reduced_precision, const at::Tensor& logits, const at::Tensor& target,
                                c10::string_view reduction);

SymNetworkShape check_ffnn_args(bool reduced_precision, const at::Tensor& input, const at::Tensor& V_weight,
                                const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                const c10::optional<at::Tensor>& W_bias, c10::string_view activation);

struct NetworkLossArgs {
  SymNetworkShape shape;
  bool is_index;
};
NetworkLossArgs check_ffnn_nll_args(const char* op, bool reduced_precision, const at::Tensor& input,
                                    const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
                                    const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias,
                                    const at::Tensor& target, c10::string_view activation,
                                    c10::string_view reduction);

// ffnn_nll_adam_step_: params are [V.weight, V.bias, W.weight, W.bias] (the
// biases left out unless has_bias), and the loss must be one number.
NetworkLossArgs check_train_step_args(bool reduced_precision, const at::Tensor& input, const at::Tensor& target,
                                      at::TensorList params, bool has_bias, c10::string_view activation,
                                      c10::string_view reduction);

// ------------------------------------------ the network of any depth (mlp ops)
// The sizes of a network of L = weights.size() layers on an input (..., n_0):
// sizes = [n_0, n_1, ..., n_L].
struct MlpShape {
  int64_t rows;
  std::vector<int64_t> sizes;
};
struct SymMlpShape {
  c10::SymInt rows;
  std::vector<c10::SymInt> sizes;
  MlpShape concrete() const;
};

// Validates input (..., n_0), weights[k] (n_{k+1}, n_k), biases[k] (n_{k+1},)
// or None (biases may be null: the backward ops have none), every n_k >= 1,
// and one activation per hidden layer (L - 1). Errors name the layer index
// and the sizes.
SymMlpShape check_mlp(const char* op, bool reduced_precision, const at::Tensor& input, at::TensorList weights,
                      const std::vector<c10::optional<at::Tensor>>* biases,
                      c10::ArrayRef<std::string> activations);

// The saved hidden activations of a network: hidden[k] (..., n_{k+1}) for k < L - 1.
void check_mlp_hidden(const char* op, const at::Tensor& input, const SymMlpShape& s, at::TensorList hidden);

struct MlpLossArgs {
  SymMlpShape shape;
  bool is_index;
};
MlpLossArgs check_mlp_nll_args(const char* op, bool reduced_precision, const at::Tensor& input,
                               at::TensorList weights, const std::vector<c10::optional<at::Tensor>>& biases,
                               const at::Tensor& target, c10::ArrayRef<std::string> activations,
                               c10::string_view reduction);

// The training step of a network of len(activations) + 1 layers: params are
// [weights[0], biases[0], weights[1], biases[1], ...] (the biases left out
// unless has_bias), and the loss must be one number.
MlpLossArgs check_mlp_train_step_args(const char* op, bool reduced_precision, const at::Tensor& input,
                                      const at::Tensor& target, at::TensorList params, bool has_bias,
                                      c10::ArrayRef<std::string> activations, c10::string_view reduction);

// The fit ops (mlp_nll_*_fit_): input (examples, n_0) with at least one
// example, target (examples,) class indices or (examples, n_L)
// probabilities, order a 1-D int64 CPU tensor of row indices (their values
// are the kernel's to check), batch_size >= 1, the params of a step, and
// alpha, scikit-learn's L2 penalty: finite, >= 0, and 0 under maximize or
// beside decoupled weight decay (decoupled_decay: weight_decay != 0 with
// decoupled_weight_decay), since the penalty is coupled weight decay.
MlpLossArgs check_mlp_fit_args(const char* op, bool reduced_precision, const at::Tensor& input,
                               const at::Tensor& target, const at::Tensor& order, int64_t batch_size,
                               at::TensorList params, bool has_bias, c10::ArrayRef<std::string> activations,
                               double alpha, bool maximize, bool decoupled_decay);

// The values the fit ops' kernels check before their first step (reading them
// is a wait for the device on CUDA): every value of order indexes a row of
// input, and with class indices every label of target is in [0, classes).
void check_fit_values(const char* op, const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                      bool is_index, int64_t classes);

// ------------------------------------------------------------- optimizers
struct AdamConfig {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
  // scikit-learn's Adam adds eps to sqrt(v) before the bias correction, torch's after it
  bool eps_before_correction = false;
};

struct SgdConfig {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize;
};

// Validates an Adam step's lists (grads may be empty: the training steps form
// the gradients themselves) and hyper-parameters: params floating, all on one
// device of the backend's type (`device_type`), every state tensor shaped,
// typed and placed like its parameter, and steps one-element floating CPU
// tensors (counters the host reads: no device sync), or for a CUDA backend
// float32/float64 ones on the parameters' device (capturable: the kernels
// read and advance them).
void check_adam_args(const char* op, bool reduced_precision, c10::DeviceType device_type, at::TensorList params,
                     at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList max_exp_avg_sqs, at::TensorList steps, const AdamConfig& config);

// The same for SGD: momentum_buffers and `fresh` (one flag per buffer) are
// empty without a momentum, one per parameter with one.
void check_sgd_args(const char* op, bool reduced_precision, c10::DeviceType device_type, at::TensorList params,
                    at::TensorList grads, at::TensorList momentum_buffers, size_t fresh, const SgdConfig& config);

// The learning rate of the tensor_lr overloads, read on the host (a CPU tensor: no device sync).
double lr_value(const char* op, const at::Tensor& lr);

// adam_step_ as each backend implements it, and its tensor_lr overload, the
// same with the learning rate read on the host.
using AdamStepFn = void (*)(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                            double lr, double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                            bool maximize, bool decoupled_weight_decay);
template <AdamStepFn Step>
void adam_step_tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                         const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay,
                         bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  Step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr_value("adam_step_", lr), beta1, beta2, eps,
       weight_decay, amsgrad, maximize, decoupled_weight_decay);
}

// The one-call training steps' tensor_lr overloads, likewise, for each backend's ffnn_nll_adam_step_ and
// mlp_nll_adam_step_.
using FfnnAdamStepFn = at::Tensor (*)(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                                      bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                      at::TensorList max_exp_avg_sqs, at::TensorList steps,
                                      c10::string_view activation, c10::string_view reduction, double lr,
                                      double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                                      bool maximize, bool decoupled_weight_decay);
template <FfnnAdamStepFn Step>
at::Tensor ffnn_adam_step_tensor_lr(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                                    bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                    at::TensorList max_exp_avg_sqs, at::TensorList steps, c10::string_view activation,
                                    c10::string_view reduction, const at::Tensor& lr, double beta1, double beta2,
                                    double eps, double weight_decay, bool amsgrad, bool maximize,
                                    bool decoupled_weight_decay) {
  return Step(input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, activation, reduction,
              lr_value("ffnn_nll_adam_step_", lr), beta1, beta2, eps, weight_decay, amsgrad, maximize,
              decoupled_weight_decay);
}

using MlpAdamStepFn = at::Tensor (*)(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                                     bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                     at::TensorList max_exp_avg_sqs, at::TensorList steps,
                                     c10::ArrayRef<std::string> activations, c10::string_view reduction, double lr,
                                     double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                                     bool maximize, bool decoupled_weight_decay);
template <MlpAdamStepFn Step>
at::Tensor mlp_adam_step_tensor_lr(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                                   bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                   at::TensorList max_exp_avg_sqs, at::TensorList steps,
                                   c10::ArrayRef<std::string> activations, c10::string_view reduction,
                                   const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay,
                                   bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  return Step(input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, activations, reduction,
              lr_value("mlp_nll_adam_step_", lr), beta1, beta2, eps, weight_decay, amsgrad, maximize,
              decoupled_weight_decay);
}

// Advances a torch.optim step counter (a one-element floating CPU tensor) and returns the new count.
double advance_step(const at::Tensor& step);
// A step counter's value, and setting it (a one-element CPU float tensor, as advance_step takes).
double read_step(const at::Tensor& step);
void write_step(const at::Tensor& step, double value);

// Whether the kernels registered for `device` in this build compute in
// float16/bfloat16: CUDA's, and in the emulated build (csrc/cuda/emulation/)
// the CUDA backend's kernels that run for CPU tensors.
bool reduced_precision_on(const c10::Device& device);

}  // namespace fastffnn
