// The CUDA training steps, each one native call: fastffnn::mlp_nll_adam_step_
// (and its case of one hidden layer, ffnn_nll_adam_step_) and
// mlp_nll_sgd_step_, for CUDA tensors.
//
// A step is the forward and loss (fastffnn::mlp_nll on the CUDA backend: the
// fused tier's one kernel for a narrow network, else cuBLAS and the
// epilogues), its backward asked for the parameters' gradients only, and the
// optimizer's multi-tensor update (optim.cu), called as C++ functions: no
// Python, no autograd graph and no dispatch in between. The loss comes back
// as a device tensor and the step counters are the CPU tensors torch.optim
// keeps, read on the host; the one wait for the device is the loss's range
// check of class indices (epilogues.cu's nll_rows), as in the loss op. The
// launches are those of the ops it strings together; the autograd route (a
// forward op, its backward op and adam_step_) makes the same launches plus
// autograd's own. The CPU's steps (csrc/cpu/train.cpp) add the one-row loops
// and the epochs (the fit ops), which have no CUDA kernels yet.
#include <ATen/ops/ones.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "../checks.h"
#include "../ops.h"
#include "backend.h"
#include "updates.h"

namespace fastffnn::cuda {
namespace {

// The parameters' gradients of the mean (or summed) loss of one step on
// validated arguments, as [grad weights[0], grad biases[0], ...] in the order
// of params, and the loss.
std::pair<at::Tensor, std::vector<at::Tensor>> loss_and_grads(const at::Tensor& input, const at::Tensor& target,
                                                              at::TensorList params, bool has_bias,
                                                              c10::ArrayRef<std::string> activations,
                                                              c10::string_view reduction) {
  // below autograd: the step is the whole computation, so the products inside record no graph
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const size_t per_layer = has_bias ? 2 : 1;
  const size_t depth = activations.size() + 1;
  std::vector<at::Tensor> weights;
  c10::List<c10::optional<at::Tensor>> biases;
  for (size_t k = 0; k < depth; ++k) {
    weights.push_back(params[k * per_layer]);
    biases.push_back(has_bias ? c10::optional<at::Tensor>(params[k * per_layer + 1]) : c10::nullopt);
  }
  auto [loss, hidden, log_probs] = ops::mlp_nll<Backend>(input, weights, biases, target, activations, reduction);
  c10::List<bool> mask;
  mask.push_back(false);  // the input
  for (size_t k = 0; k < depth; ++k) mask.push_back(true);
  for (size_t k = 0; k < depth; ++k) mask.push_back(has_bias);
  mask.push_back(false);  // the target
  auto [gx, gw, gb, gt] = ops::mlp_nll_backward<Backend>(at::ones({}, loss.options()), input, weights, hidden,
                                                         log_probs, target, activations, reduction, mask);
  std::vector<at::Tensor> grads;
  for (size_t k = 0; k < depth; ++k) {
    grads.push_back(gw[k]);
    if (has_bias) grads.push_back(gb[k]);
  }
  return {loss, std::move(grads)};
}

at::Tensor adam_network_step(const char* op, const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                             bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                             at::TensorList max_exp_avg_sqs, at::TensorList steps,
                             c10::ArrayRef<std::string> activations, c10::string_view reduction,
                             const AdamConfig& config) {
  check_adam_args(op, Backend::kReducedPrecision, kDevice, params, {}, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                  config);
  auto [loss, grads] = loss_and_grads(input, target, params, has_bias, activations, reduction);
  adam_update(op, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, config);
  return loss;
}

at::Tensor ffnn_nll_adam_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                               bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                               at::TensorList max_exp_avg_sqs, at::TensorList steps, c10::string_view activation,
                               c10::string_view reduction, double lr, double beta1, double beta2, double eps,
                               double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  check_train_step_args(Backend::kReducedPrecision, input, target, params, has_bias, activation, reduction);
  const std::string act(activation);
  return adam_network_step("ffnn_nll_adam_step_", input, target, params, has_bias, exp_avgs, exp_avg_sqs,
                           max_exp_avg_sqs, steps, c10::ArrayRef<std::string>(act), reduction,
                           {lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay});
}

at::Tensor mlp_nll_adam_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                              bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                              at::TensorList max_exp_avg_sqs, at::TensorList steps,
                              c10::ArrayRef<std::string> activations, c10::string_view reduction, double lr,
                              double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                              bool maximize, bool decoupled_weight_decay) {
  constexpr const char* op = "mlp_nll_adam_step_";
  check_mlp_train_step_args(op, Backend::kReducedPrecision, input, target, params, has_bias, activations, reduction);
  return adam_network_step(op, input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                           activations, reduction,
                           {lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay});
}

at::Tensor mlp_nll_sgd_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                             bool has_bias, at::TensorList momentum_buffers, const c10::List<bool>& fresh,
                             c10::ArrayRef<std::string> activations, c10::string_view reduction, double lr,
                             double momentum, double dampening, double weight_decay, bool nesterov, bool maximize) {
  constexpr const char* op = "mlp_nll_sgd_step_";
  check_mlp_train_step_args(op, Backend::kReducedPrecision, input, target, params, has_bias, activations, reduction);
  const SgdConfig config{lr, momentum, dampening, weight_decay, nesterov, maximize};
  check_sgd_args(op, Backend::kReducedPrecision, kDevice, params, {}, momentum_buffers, fresh.size(), config);
  auto [loss, grads] = loss_and_grads(input, target, params, has_bias, activations, reduction);
  sgd_update(op, params, grads, momentum_buffers, fresh, config);
  return loss;
}

}  // namespace
}  // namespace fastffnn::cuda

// The emulated build has no CUDA tensors: it registers these steps for CPU
// tensors (csrc/cpu/train.cpp then registers only the fit ops).
#ifdef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) {
#else
TORCH_LIBRARY_IMPL(fastffnn, CUDA, m) {
#endif
  m.impl("ffnn_nll_adam_step_", &fastffnn::cuda::ffnn_nll_adam_step_);
  m.impl("ffnn_nll_adam_step_.tensor_lr",
         &fastffnn::ffnn_adam_step_tensor_lr<&fastffnn::cuda::ffnn_nll_adam_step_>);
  m.impl("mlp_nll_adam_step_", &fastffnn::cuda::mlp_nll_adam_step_);
  m.impl("mlp_nll_adam_step_.tensor_lr", &fastffnn::mlp_adam_step_tensor_lr<&fastffnn::cuda::mlp_nll_adam_step_>);
  m.impl("mlp_nll_sgd_step_", &fastffnn::cuda::mlp_nll_sgd_step_);
}
