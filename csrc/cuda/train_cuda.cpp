// The CUDA training steps and epochs, each one native call:
// fastffnn::mlp_nll_adam_step_ (and its case of one hidden layer,
// ffnn_nll_adam_step_), mlp_nll_sgd_step_, and the epochs of them,
// mlp_nll_adam_fit_ and mlp_nll_sgd_fit_, for CUDA tensors.
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
// autograd's own.
//
// A fit call checks the order and every label once, then runs its steps with
// no wait for the device at all: the labels' check is done (IndicesChecked),
// each batch is gathered on the device from the order, copied there once, and
// each step's loss is written into the device tensor the call returns. At
// batch 1 a small network's call is one launch per 1,024 steps instead (row_fit.cu).
// The CPU's steps (csrc/cpu/train.cpp) add the one-row loops.
#include <ATen/OpMathType.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/ones.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../checks.h"
#include "../ops.h"
#include "backend.h"
#include "indices_checked.h"
#include "row_fit.h"
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
  const auto guard = Backend::guard(input);
  // before the forward and backward, which a capture would otherwise hold; device counters may be captured
  if (!steps_on_device(steps)) refuse_capture(op, kHostStepCounters);
  auto [loss, grads] = loss_and_grads(input, target, params, has_bias, activations, reduction);
  adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, config);
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
  const auto guard = Backend::guard(input);
  refuse_fresh_capture(op, fresh);  // before the forward and backward, which a capture would otherwise hold
  auto [loss, grads] = loss_and_grads(input, target, params, has_bias, activations, reduction);
  sgd_update(params, grads, momentum_buffers, fresh, config);
  return loss;
}

// ---------------------------------------------------------------- epochs
// Adam's step counters for a call that reads them on the host: CPU counters as they are, device (capturable)
// ones as CPU copies that go back to the device when the call ends.
class HostSteps {
 public:
  explicit HostSteps(at::TensorList device_or_host) : given_(device_or_host) {
    for (const at::Tensor& s : given_) copies_.push_back(s.is_cpu() ? s : s.to(at::kCPU));
    steps = copies_;
  }
  ~HostSteps() {
    try {
      for (size_t i = 0; i < given_.size(); ++i)
        if (!given_[i].is_same(copies_[i])) given_[i].copy_(copies_[i]);
    } catch (...) {  // a destructor must not throw; the error that unwinds it, if any, is the one to report
    }
  }
  HostSteps(const HostSteps&) = delete;
  HostSteps& operator=(const HostSteps&) = delete;
  at::TensorList steps;

 private:
  at::TensorList given_;
  std::vector<at::Tensor> copies_;
};

// Adds scikit-learn's L2 penalty (alpha, see the fit ops' schema) of a batch
// of `rows` rows to the weights' gradients and to the loss, with the weights
// before the step.
void add_penalty(double alpha, int64_t rows, at::TensorList params, bool has_bias, std::vector<at::Tensor>& grads,
                 at::Tensor& loss) {
  if (alpha == 0) return;
  const size_t per_layer = has_bias ? 2 : 1;
  at::Tensor squares;
  for (size_t i = 0; i < params.size(); i += per_layer) {
    const at::Tensor s = params[i].square().sum(at::toOpMathType(params[i].scalar_type()));
    squares = squares.defined() ? squares.add_(s) : s;
    grads[i].add_(params[i], alpha / static_cast<double>(rows));
  }
  loss.add_(squares, 0.5 * alpha / static_cast<double>(rows));
}

// Steps over the rows of input (n, n_0) and target (n,) or (n, n_L) in the
// given order (a CPU tensor), batch_size rows at a time (the last batch
// smaller), as the Python loop over order.split(batch_size) of the step op
// would run them: step(x, t) trains on one batch and returns its loss. At
// batch 1, every_row(rows, losses) may run all the steps at once (the
// one-block epoch, row_fit.cu) and say so. The order's values and every
// label are checked before the first step; returns each step's loss, on the
// device.
template <typename Step, typename EveryRow>
at::Tensor fit_steps(const char* op, const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                     int64_t batch_size, int64_t classes, bool is_index, const Step& step,
                     const EveryRow& every_row) {
  const auto guard = Backend::guard(input);
  refuse_capture(op, kEpochsReadTheDevice);  // before the checks, which read the device
  check_fit_values(op, input, target, order, is_index, classes);
  const int64_t count = order.numel();
  const int64_t steps = (count + batch_size - 1) / batch_size;
  at::Tensor losses = at::empty({steps}, input.options());
  if (steps == 0) return losses;
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor rows = order.to(input.device()).contiguous();  // one copy for the whole call
  if (batch_size == 1 && every_row(rows, losses)) return losses;
  const IndicesChecked checked;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t begin = s * batch_size;
    const at::Tensor batch = rows.narrow(0, begin, std::min(batch_size, count - begin));
    losses.select(0, s).copy_(step(input.index_select(0, batch), target.index_select(0, batch)));
  }
  return losses;
}

at::Tensor mlp_nll_adam_fit_(const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                             int64_t batch_size, at::TensorList params, bool has_bias, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                             c10::ArrayRef<std::string> activations, double lr, double beta1, double beta2,
                             double eps, double weight_decay, bool amsgrad, bool maximize,
                             bool decoupled_weight_decay, double alpha, bool eps_before_correction) {
  constexpr const char* op = "mlp_nll_adam_fit_";
  const auto args = check_mlp_fit_args(op, Backend::kReducedPrecision, input, target, order, batch_size, params,
                                       has_bias, activations, alpha, maximize,
                                       decoupled_weight_decay && weight_decay != 0);
  const AdamConfig config{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay};
  check_adam_args(op, Backend::kReducedPrecision, kDevice, params, {}, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                  config);
  // A fit reads its counters on the host (scikit-learn's eps, the one-block epoch) and waits for the device
  // anyway (the labels' check): device (capturable) counters come to the host for the call and go back after it,
  // also when a step fails, so that they count the steps the parameters took.
  {
    const auto guard = Backend::guard(input);
    refuse_capture(op, kEpochsReadTheDevice);  // before HostSteps, whose copy of device counters reads the device
  }
  const HostSteps host(steps);
  const at::TensorList counters = host.steps;
  if (eps_before_correction) {
    // scikit-learn's optimizer keeps one step count; its eps is one number a step for all parameters here
    for (const at::Tensor& s : counters)
      TORCH_CHECK_VALUE(read_step(s) == read_step(counters[0]), "fastffnn.", op,
                        ": eps_before_correction needs one step count for all parameters, got ", read_step(s),
                        " and ", read_step(counters[0]));
  }
  const MlpShape shape = args.shape.concrete();
  return fit_steps(op, input, target, order, batch_size, shape.sizes.back(), args.is_index,
                   [&](const at::Tensor& x, const at::Tensor& t) {
                     auto [loss, grads] = loss_and_grads(x, t, params, has_bias, activations, "mean");
                     add_penalty(alpha, x.size(0), params, has_bias, grads, loss);
                     AdamConfig c = config;
                     // scikit-learn adds eps to sqrt(v) before the bias correction: torch's eps / sqrt(1 - beta2^t)
                     if (eps_before_correction && !counters.empty())
                       c.eps = eps / std::sqrt(1 - std::pow(beta2, read_step(counters[0]) + 1));
                     adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, counters, c);
                     return loss;
                   },
                   [&](const at::Tensor& rows, at::Tensor& losses) {
                     const RowFitProblem problem{input,  target,      args.is_index, rows,  params,
                                                 has_bias, activations, shape.sizes,   alpha, losses};
                     std::vector<at::Tensor> state(exp_avgs.begin(), exp_avgs.end());
                     state.insert(state.end(), exp_avg_sqs.begin(), exp_avg_sqs.end());
                     state.insert(state.end(), max_exp_avg_sqs.begin(), max_exp_avg_sqs.end());
                     if (!row_fit_applies(problem, state)) return false;
                     adam_row_fit(problem,
                                  {exp_avgs, exp_avg_sqs, max_exp_avg_sqs, counters, config, eps_before_correction});
                     return true;
                   });
}

at::Tensor mlp_nll_sgd_fit_(const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                            int64_t batch_size, at::TensorList params, bool has_bias, at::TensorList momentum_buffers,
                            const c10::List<bool>& fresh, c10::ArrayRef<std::string> activations, double lr,
                            double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                            double alpha) {
  constexpr const char* op = "mlp_nll_sgd_fit_";
  const auto args = check_mlp_fit_args(op, Backend::kReducedPrecision, input, target, order, batch_size, params,
                                       has_bias, activations, alpha, maximize, false);
  const SgdConfig config{lr, momentum, dampening, weight_decay, nesterov, maximize};
  check_sgd_args(op, Backend::kReducedPrecision, kDevice, params, {}, momentum_buffers, fresh.size(), config);
  c10::List<bool> first = fresh.copy();
  const MlpShape shape = args.shape.concrete();
  return fit_steps(op, input, target, order, batch_size, shape.sizes.back(), args.is_index,
                   [&](const at::Tensor& x, const at::Tensor& t) {
                     auto [loss, grads] = loss_and_grads(x, t, params, has_bias, activations, "mean");
                     add_penalty(alpha, x.size(0), params, has_bias, grads, loss);
                     sgd_update(params, grads, momentum_buffers, first, config);
                     for (size_t i = 0; i < first.size(); ++i) first.set(i, false);  // a buffer holds its first step
                     return loss;
                   },
                   [&](const at::Tensor& rows, at::Tensor& losses) {
                     const RowFitProblem problem{input,  target,      args.is_index, rows,  params,
                                                 has_bias, activations, shape.sizes,   alpha, losses};
                     if (!row_fit_applies(problem, momentum_buffers)) return false;
                     sgd_row_fit(problem, {momentum_buffers, fresh, config});
                     return true;
                   });
}

}  // namespace
}  // namespace fastffnn::cuda

// The emulated build has no CUDA tensors: it registers these steps and epochs
// for CPU tensors (csrc/cpu/train.cpp then registers none).
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
  m.impl("mlp_nll_adam_fit_", &fastffnn::cuda::mlp_nll_adam_fit_);
  m.impl("mlp_nll_sgd_fit_", &fastffnn::cuda::mlp_nll_sgd_fit_);
}
