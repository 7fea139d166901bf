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

double lr_value(const char* op, const at::Tensor& lr) {
  TORCH_CHECK_VALUE(lr.device().is_cpu() && lr.numel() == 1 && lr.is_floating_point(), "fastffnn.", op,
                    ": a Tensor lr must be a floating CPU tensor with one element, got ", lr.scalar_type(),
                    " of shape ", lr.sizes(), " on ", lr.device());
  return lr.item<double>();
}

double advance_step(const at::Tensor& step) {
  double count = 0;
  AT_DISPATCH_FLOATING_TYPES(step.scalar_type(), "fastffnn.advance_step", [&] {
    scalar_t* s = step.data_ptr<scalar_t>();
    *s += 1;
    count = static_cast<double>(*s);
  });
  return count;
}

namespace {

void check_state(const char* op, const char* name, const at::Tensor& t, const at::Tensor& param, size_t i) {
  TORCH_CHECK_VALUE(t.device() == param.device() && t.scalar_type() == param.scalar_type() &&
                        t.sizes() == param.sizes(),
                    "fastffnn.", op, ": ", name, "[", i, "] must be a ", param.scalar_type(), " tensor of shape ",
                    param.sizes(), " on ", param.device(), ", got ", t.scalar_type(), " of shape ", t.sizes(), " on ",
                    t.device());
}

void check_params(const char* op, at::TensorList params, at::TensorList grads) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.device().is_cpu(), "fastffnn.", op, ": params[", i,
                      "] must be a CPU tensor (on CUDA use torch.optim's fused=True), got one on ", p.device());
    check_floating(op, Backend::kReducedPrecision, "params", p);
    if (!grads.empty()) check_state(op, "grads", grads[i], p, i);
  }
}

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
  const size_t n = params.size();
  TORCH_CHECK_VALUE((grads.empty() || grads.size() == n) && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                        steps.size() == n && max_exp_avg_sqs.size() == (c.amsgrad ? n : 0),
                    "fastffnn.", op, ": got ", n, " params, ", grads.size(), " grads, ", exp_avgs.size(),
                    " exp_avgs, ", exp_avg_sqs.size(), " exp_avg_sqs, ", max_exp_avg_sqs.size(),
                    " max_exp_avg_sqs (", c.amsgrad ? n : 0, " expected) and ", steps.size(), " steps");
  TORCH_CHECK_VALUE(c.lr >= 0 && c.eps >= 0 && c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1 &&
                        c.weight_decay >= 0,
                    "fastffnn.", op, ": invalid hyper-parameters lr=", c.lr, " betas=(", c.beta1, ", ", c.beta2,
                    ") eps=", c.eps, " weight_decay=", c.weight_decay);
  check_params(op, params, grads);
  for (size_t i = 0; i < n; ++i) {
    check_state(op, "exp_avgs", exp_avgs[i], params[i], i);
    check_state(op, "exp_avg_sqs", exp_avg_sqs[i], params[i], i);
    if (c.amsgrad) check_state(op, "max_exp_avg_sqs", max_exp_avg_sqs[i], params[i], i);
    const at::Tensor& step = steps[i];
    TORCH_CHECK_VALUE(step.device().is_cpu() && step.numel() == 1 && step.is_floating_point(), "fastffnn.", op,
                      ": steps[", i, "] must be a CPU floating tensor with one element, got ", step.scalar_type(),
                      " of shape ", step.sizes(), " on ", step.device());
  }
  return Adam{exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, c, {}};
}

Sgd make_sgd(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             const c10::List<bool>& fresh, const SgdConfig& c) {
  const size_t n = params.size(), with_buffers = c.momentum != 0 ? n : 0;
  TORCH_CHECK_VALUE((grads.empty() || grads.size() == n) && momentum_buffers.size() == with_buffers &&
                        fresh.size() == with_buffers,
                    "fastffnn.", op, ": got ", n, " params, ", grads.size(), " grads, ", momentum_buffers.size(),
                    " momentum_buffers and ", fresh.size(), " fresh flags (", with_buffers,
                    " of each expected with momentum=", c.momentum, ")");
  TORCH_CHECK_VALUE(c.lr >= 0 && c.momentum >= 0 && c.weight_decay >= 0 &&
                        (!c.nesterov || (c.momentum > 0 && c.dampening == 0)),
                    "fastffnn.", op, ": invalid hyper-parameters lr=", c.lr, " momentum=", c.momentum,
                    " dampening=", c.dampening, " weight_decay=", c.weight_decay, " nesterov=", c.nesterov,
                    " (nesterov needs a momentum and zero dampening)");
  check_params(op, params, grads);
  for (size_t i = 0; i < with_buffers; ++i) check_state(op, "momentum_buffers", momentum_buffers[i], params[i], i);
  std::vector<bool> flags(fresh.begin(), fresh.end());
  return Sgd{momentum_buffers, std::move(flags), c};
}

void Adam::apply(at::TensorList params, at::TensorList grads) const {
  for (size_t i = 0; i < params.size(); ++i) {
    const bool amsgrad = !max_exp_avg_sqs.empty();
    on_contiguous(params[i], grads[i], {exp_avgs[i], exp_avg_sqs[i], amsgrad ? max_exp_avg_sqs[i] : at::Tensor()},
                  [&](const std::vector<at::Tensor>& t, const at::Tensor& g) {
                    AT_DISPATCH_FLOATING_TYPES(t[0].scalar_type(), "fastffnn.adam_step", [&] {
                      const AdamUpdate<scalar_t> update{AdamVec<scalar_t>(config, counts[i]),
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

void adam_step_tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                         const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay,
                         bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr_value("adam_step_", lr), beta1, beta2,
             eps, weight_decay, amsgrad, maximize, decoupled_weight_decay);
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

TORCH_LIBRARY_IMPL(fastffnn, CPU, m) {
  m.impl("adam_step_", &adam_step_);
  m.impl("adam_step_.tensor_lr", &adam_step_tensor_lr);
  m.impl("sgd_step_", &sgd_step_);
}

}  // namespace fastffnn::cpu
