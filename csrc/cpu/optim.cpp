// fastffnn::adam_step_ and fastffnn::sgd_step_: torch.optim.Adam's and
// torch.optim.SGD's updates (their single-tensor forms, the ones they use for
// CPU tensors) for every parameter in one call: one vectorised pass over each
// parameter's arrays, split across threads. At the sizes of these models that
// replaces ~10 ATen ops per parameter with a few microseconds.
#include <torch/library.h>

#include "../checks.h"
#include "backend.h"
#include "optim.h"

namespace fastffnn::cpu {

namespace {

// Runs `update(p, g, states)` on contiguous versions of a parameter and its
// states (torch.optim accepts them strided: a transposed or sliced parameter),
// writing back the copies.
template <typename Update>
void on_contiguous(const at::Tensor& param, const at::Tensor& grad, std::vector<at::Tensor> states,
                   const Update& update) {
  states.insert(states.begin(), param);
  std::vector<at::Tensor> work;
  for (const at::Tensor& t : states) work.push_back(t.defined() ? t.contiguous() : t);
  update(work, grad.contiguous());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the copies are the update itself, not recorded
  for (size_t i = 0; i < states.size(); ++i)
    if (states[i].defined() && !states[i].is_same(work[i])) states[i].copy_(work[i]);
}

}  // namespace

Adam make_adam(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
               const AdamConfig& c) {
  check_adam_args(op, Backend::kReducedPrecision, c10::DeviceType::CPU, params, grads, exp_avgs, exp_avg_sqs,
                  max_exp_avg_sqs, steps, c);
  return Adam{exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, c, {}};
}

Sgd make_sgd(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             const c10::List<bool>& fresh, const SgdConfig& c) {
  check_sgd_args(op, Backend::kReducedPrecision, c10::DeviceType::CPU, params, grads, momentum_buffers,
                 fresh.size(), c);
  return Sgd{momentum_buffers, std::vector<bool>(fresh.begin(), fresh.end()), c};
}

void Adam::apply(at::TensorList params, at::TensorList grads) const {
  for (size_t i = 0; i < params.size(); ++i) {
    const bool amsgrad = !max_exp_avg_sqs.empty();
    on_contiguous(params[i], grads[i], {exp_avgs[i], exp_avg_sqs[i], amsgrad ? max_exp_avg_sqs[i] : at::Tensor()},
                  [&](const std::vector<at::Tensor>& t, const at::Tensor& g) {
                    AT_DISPATCH_FLOATING_TYPES(t[0].scalar_type(), "fastffnn.adam_step", [&] {
                      const AdamUpdate<scalar_t> update{AdamVec<scalar_t>(config, powers[i].first, powers[i].second),
                                                        t[0].data_ptr<scalar_t>(), t[1].data_ptr<scalar_t>(),
                                                        t[2].data_ptr<scalar_t>(),
                                                        amsgrad ? t[3].data_ptr<scalar_t>() : nullptr};
                      update_all(update, g.const_data_ptr<scalar_t>(), t[0].numel());
                    });
                  });
  }
}

void Sgd::apply(at::TensorList params, at::TensorList grads) const {
  for (size_t i = 0; i < params.size(); ++i) {
    const bool momentum = !buffers.empty();
    on_contiguous(params[i], grads[i], {momentum ? buffers[i] : at::Tensor()},
                  [&](const std::vector<at::Tensor>& t, const at::Tensor& g) {
                    AT_DISPATCH_FLOATING_TYPES(t[0].scalar_type(), "fastffnn.sgd_step", [&] {
                      const SgdUpdate<scalar_t> update{SgdVec<scalar_t>(config), t[0].data_ptr<scalar_t>(),
                                                       momentum ? t[1].data_ptr<scalar_t>() : nullptr,
                                                       momentum && fresh[i]};
                      update_all(update, g.const_data_ptr<scalar_t>(), t[0].numel());
                    });
                  });
  }
}

namespace {

void adam_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                at::TensorList max_exp_avg_sqs, at::TensorList steps, double lr, double beta1, double beta2,
                double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  TORCH_CHECK_VALUE(grads.size() == params.size(), "fastffnn.adam_step_: got ", params.size(), " params but ",
                    grads.size(), " grads");
  Adam adam = make_adam("adam_step_", params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                        {lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay});
  adam.begin_step();
  adam.apply(params, grads);
  adam.bump(params);
}

void sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               const c10::List<bool>& fresh, double lr, double momentum, double dampening, double weight_decay,
               bool nesterov, bool maximize) {
  TORCH_CHECK_VALUE(grads.size() == params.size(), "fastffnn.sgd_step_: got ", params.size(), " params but ",
                    grads.size(), " grads");
  const Sgd sgd = make_sgd("sgd_step_", params, grads, momentum_buffers, fresh,
                           {lr, momentum, dampening, weight_decay, nesterov, maximize});
  sgd.apply(params, grads);
  sgd.bump(params);
}

}  // namespace

// The emulated build registers csrc/cuda/optim.cu's kernels for CPU tensors instead.
#ifndef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) {
  m.impl("adam_step_", &adam_step_);
  m.impl("adam_step_.tensor_lr", &fastffnn::adam_step_tensor_lr<&adam_step_>);
  m.impl("sgd_step_", &sgd_step_);
}
#endif

}  // namespace fastffnn::cpu
