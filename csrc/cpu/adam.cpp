// fastffnn::adam_step_, and fastffnn::mlp_nll_adam_step_ with its case of one
// hidden layer fastffnn::ffnn_nll_adam_step_: the CPU's training step.
//
// adam_step_ applies torch.optim.Adam's update (its single-tensor form, the
// one it uses for CPU tensors) to every parameter in one call: one pass over
// each parameter's five arrays (parameter, gradient, two moments, and the
// amsgrad maximum), vectorised with at::vec and split across threads. At the
// sizes of this model that replaces ~10 ATen ops per parameter, 170-290 µs a
// step, with a few microseconds.
//
// mlp_nll_adam_step_ is a whole training step as one native call, for a
// network of any depth: its forward and loss (fastffnn::mlp_nll), its
// backward (fastffnn::mlp_nll_backward, asked for the parameters' gradients
// only) and adam_step_, with no Python and no autograd graph in between: the
// kernels are called as C++ functions, not through the dispatcher. One
// example takes direct loops instead (one_row_step).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <cmath>
#include <utility>

#include "../activation.h"
#include "../checks.h"
#include "../ops.h"
#include "backend.h"
#include "row_ops.h"

namespace fastffnn {
namespace {

using cpu::Act;
using cpu::act_backward_row;
using cpu::nll_backward_row;
using cpu::row_logsumexp;
using cpu::soft_nll_row;

struct AdamConfig {
  double lr, beta1, beta2, eps, weight_decay;
  bool amsgrad, maximize, decoupled_weight_decay;
};

// torch.optim.Adam's update of one vector of parameters, with the step's
// constants computed once.
template <typename T>
struct AdamVec {
  using Vec = at::vec::Vectorized<T>;
  Vec neg_step_size, inv_bc2_sqrt, w1, b2, w2, eps, wd, decay;
  bool weight_decay, decoupled, amsgrad, maximize;

  AdamVec(const AdamConfig& c, double step)
      : neg_step_size(static_cast<T>(-c.lr / (1 - std::pow(c.beta1, step)))),
        inv_bc2_sqrt(static_cast<T>(1 / std::sqrt(1 - std::pow(c.beta2, step)))),
        w1(static_cast<T>(1 - c.beta1)),
        b2(static_cast<T>(c.beta2)),
        w2(static_cast<T>(1 - c.beta2)),
        eps(static_cast<T>(c.eps)),
        wd(static_cast<T>(c.weight_decay)),
        decay(static_cast<T>(1 - c.lr * c.weight_decay)),
        weight_decay(c.weight_decay != 0),
        decoupled(c.decoupled_weight_decay),
        amsgrad(c.amsgrad),
        maximize(c.maximize) {}

  // p, m, v, vmax: `count` elements each; gv: their gradient.
  void update(T* p, Vec gv, T* m, T* v, T* vmax, int64_t count) const {
    if (maximize) gv = gv.neg();
    Vec pv = Vec::loadu(p, count);
    if (weight_decay) {
      if (decoupled)
        pv = pv * decay;
      else
        gv = gv + pv * wd;
    }
    Vec mv = Vec::loadu(m, count);
    mv = mv + w1 * (gv - mv);  // torch's lerp for weights below 0.5
    Vec vv = Vec::loadu(v, count) * b2 + w2 * gv * gv;
    Vec second = vv;
    if (amsgrad) {
      second = at::vec::maximum(Vec::loadu(vmax, count), vv);
      second.store(vmax, count);
    }
    // torch divides by sqrt(1 - beta2^t); multiplying by its reciprocal
    // differs by an ulp and leaves one division a vector, which is what
    // bounds this loop (the divider is its slowest unit).
    const Vec denom = second.sqrt() * inv_bc2_sqrt + eps;
    (pv + neg_step_size * (mv / denom)).store(p, count);
    mv.store(m, count);
    vv.store(v, count);
  }
};

// An element's update costs about as much as kAdamWork multiply-adds (a
// square root and a division, whose unit takes a dozen cycles per vector, and
// a dozen other operations), which is how one_row_grain weighs it: a 256 x 256
// layer's update is worth both threads, its 256 x 256 product is not.
constexpr int64_t kAdamWork = 8;

template <typename T>
void adam_update(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, double step, const AdamConfig& c) {
  using Vec = at::vec::Vectorized<T>;
  const AdamVec<T> adam(c, step);
  at::parallel_for(0, n, cpu::one_row_grain(kAdamWork, n), [&](int64_t begin, int64_t end) {
    cpu::for_each_vector<T>(begin, end, [&](int64_t i, int64_t count) {
      adam.update(p + i, Vec::loadu(g + i, count), m + i, v + i, vmax ? vmax + i : nullptr, count);
    });
  });
}

// Advances a torch.optim.Adam step counter (a one-element float tensor) and returns the new count.
double advance_step(const at::Tensor& step) {
  double count = 0;
  AT_DISPATCH_FLOATING_TYPES(step.scalar_type(), "fastffnn.adam_step", [&] {
    scalar_t* s = step.data_ptr<scalar_t>();
    *s += 1;
    count = static_cast<double>(*s);
  });
  return count;
}

void check_state(const char* name, const at::Tensor& t, const at::Tensor& param, size_t i) {
  TORCH_CHECK_VALUE(t.device() == param.device() && t.scalar_type() == param.scalar_type() &&
                        t.sizes() == param.sizes(),
                    "fastffnn.adam_step_: ", name, "[", i, "] must be a ", param.scalar_type(), " tensor of shape ",
                    param.sizes(), " on ", param.device(), ", got ", t.scalar_type(), " of shape ", t.sizes(), " on ",
                    t.device());
}

// Whether the update can run on the tensors' memory as it is: the loops read
// every array as one contiguous vector.
bool all_contiguous(const at::Tensor& p, const at::Tensor* g, at::TensorList m, at::TensorList v,
                    at::TensorList vmax, size_t i) {
  return p.is_contiguous() && (!g || g->is_contiguous()) && m[i].is_contiguous() && v[i].is_contiguous() &&
         (vmax.empty() || vmax[i].is_contiguous());
}

// Records the in-place update in each tensor's version counter, as the
// in-place ops of torch.optim.Adam do, so that autograd refuses a backward
// through a graph that saved a parameter before the step ("modified by an
// inplace operation") instead of silently using the new values.
void bump_versions(at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                   at::TensorList max_exp_avg_sqs, at::TensorList steps) {
  for (at::TensorList list : {params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps})
    for (const at::Tensor& t : list)
      if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

// Validates an Adam step's lists (grads may be empty: the fused step forms
// the gradients itself) and hyper-parameters.
AdamConfig check_adam(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                      at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps, double lr,
                      double beta1, double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                      bool decoupled_weight_decay) {
  const size_t n = params.size();
  TORCH_CHECK_VALUE((grads.empty() || grads.size() == n) && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                        steps.size() == n && max_exp_avg_sqs.size() == (amsgrad ? n : 0),
                    "fastffnn.adam_step_: got ", n, " params, ", grads.size(), " grads, ", exp_avgs.size(),
                    " exp_avgs, ", exp_avg_sqs.size(), " exp_avg_sqs, ", max_exp_avg_sqs.size(),
                    " max_exp_avg_sqs (", amsgrad ? n : 0, " expected) and ", steps.size(), " steps");
  TORCH_CHECK_VALUE(lr >= 0 && eps >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && weight_decay >= 0,
                    "fastffnn.adam_step_: invalid hyper-parameters lr=", lr, " betas=(", beta1, ", ", beta2,
                    ") eps=", eps, " weight_decay=", weight_decay);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.device().is_cpu(), "fastffnn.adam_step_: params[", i,
                      "] must be a CPU tensor (use torch.optim.Adam(fused=True) on CUDA), got one on ", p.device());
    check_floating("adam_step_", cpu::Backend::kReducedPrecision, "params", p);
    if (!grads.empty()) check_state("grads", grads[i], p, i);
    check_state("exp_avgs", exp_avgs[i], p, i);
    check_state("exp_avg_sqs", exp_avg_sqs[i], p, i);
    if (amsgrad) check_state("max_exp_avg_sqs", max_exp_avg_sqs[i], p, i);
    const at::Tensor& step = steps[i];
    TORCH_CHECK_VALUE(step.device().is_cpu() && step.numel() == 1 && step.is_floating_point(),
                      "fastffnn.adam_step_: steps[", i, "] must be a CPU floating tensor with one element, got ",
                      step.scalar_type(), " of shape ", step.sizes(), " on ", step.device());
  }
  return AdamConfig{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay};
}

void adam_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                at::TensorList max_exp_avg_sqs, at::TensorList steps, double lr, double beta1, double beta2,
                double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  TORCH_CHECK_VALUE(grads.size() == params.size(), "fastffnn.adam_step_: got ", params.size(), " params but ",
                    grads.size(), " grads");
  const AdamConfig config = check_adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                                       beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay);
  for (size_t i = 0; i < params.size(); ++i) {
    const double count = advance_step(steps[i]);  // first, as torch.optim.Adam does
    // Strided tensors (a transposed or sliced parameter, as torch.optim.Adam
    // accepts) are updated through contiguous copies, written back after.
    const bool direct = all_contiguous(params[i], &grads[i], exp_avgs, exp_avg_sqs, max_exp_avg_sqs, i);
    const at::Tensor p = params[i].contiguous(), g = grads[i].contiguous(), m = exp_avgs[i].contiguous(),
                     v = exp_avg_sqs[i].contiguous(), vmax = amsgrad ? max_exp_avg_sqs[i].contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "fastffnn.adam_step", [&] {
      adam_update(p.data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), m.data_ptr<scalar_t>(),
                  v.data_ptr<scalar_t>(), amsgrad ? vmax.data_ptr<scalar_t>() : nullptr, p.numel(), count, config);
    });
    if (!direct) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // the copies are the update itself, not recorded
      for (auto [to, from] : {std::pair{params[i], p}, std::pair{exp_avgs[i], m}, std::pair{exp_avg_sqs[i], v}})
        if (!to.is_same(from)) to.copy_(from);
      if (amsgrad && !max_exp_avg_sqs[i].is_same(vmax)) max_exp_avg_sqs[i].copy_(vmax);
    }
  }
  bump_versions(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps);
}

// ---------------------------------------------------------------- one row
// The lecture's step, one example: with a single row every matrix product is
// a matrix-vector product, which the loops below do directly (MKL's
// single-row products are slow on the AMD CPUs this runs on, and every ATen
// call costs microseconds). The weight gradients are never stored: each is
// formed a vector at a time, as the outer product it is, and fed straight
// into the Adam update of the weights it belongs to.
template <typename T>
struct AdamBuffers {
  T *p, *m, *v, *vmax;
};

template <typename T>
AdamBuffers<T> buffers(at::TensorList params, at::TensorList m, at::TensorList v, at::TensorList vmax, size_t i) {
  return {params[i].data_ptr<T>(), m[i].data_ptr<T>(), v[i].data_ptr<T>(),
          vmax.empty() ? nullptr : vmax[i].data_ptr<T>()};
}

// One layer's parameters and their Adam steps.
template <typename T>
struct LayerBuffers {
  AdamBuffers<T> weight, bias;
  bool has_bias;
  double weight_step, bias_step;
  int64_t out, in;
};

template <typename T>
T one_row_step(const T* x, const std::vector<LayerBuffers<T>>& layers, const std::vector<Activation>& acts,
               int64_t index, const T* probs, const AdamConfig& config) {
  using Vec = at::vec::Vectorized<T>;
  const size_t depth = layers.size();
  // forward: a[k+1] = act(W_k a[k] + b_k) for the hidden layers, then the logits z, log-softmax and the loss
  std::vector<std::vector<T>> a(depth);
  for (size_t k = 1; k < depth; ++k) a[k].resize(layers[k].in);
  const auto input_of = [&](size_t k) { return k == 0 ? x : a[k].data(); };
  const int64_t classes = layers.back().out;
  std::vector<T> z(classes), dz(classes);
  for (size_t k = 0; k < depth; ++k) {
    const LayerBuffers<T>& l = layers[k];
    T* out = k + 1 == depth ? z.data() : a[k + 1].data();
    cpu::matvec(l.weight.p, input_of(k), out, l.out, l.in);
    if (k + 1 < depth) {
      dispatch_activation(acts[k], [&](auto tag) {
        cpu::bias_act_row<decltype(tag)::value>(out, l.has_bias ? l.bias.p : nullptr, l.out);
      });
    } else if (l.has_bias) {
      for (int64_t c = 0; c < classes; ++c) out[c] += l.bias.p[c];
    }
  }
  const T lse = row_logsumexp(z.data(), classes);
  const T loss = probs ? soft_nll_row(z.data(), lse, probs, classes) : lse - z[index];
  // backward, from the top: dz = sum(y) softmax(z) - y; at each layer the gradient of its input,
  // W_k^T dz times act' (before W_k moves), then Adam on W_k and b_k with the weight gradient formed
  // as the outer product it is, a row at a time
  nll_backward_row(dz.data(), z.data(), lse, probs, index, T(1), classes);
  auto update_rows = [&](const AdamBuffers<T>& b, const AdamVec<T>& adam, const T* row_grad, const T* col,
                         int64_t rows, int64_t cols) {
    at::parallel_for(0, rows, cpu::one_row_grain(kAdamWork * cols, rows), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const Vec g(row_grad[r]);
        const int64_t o = r * cols;
        cpu::for_each_vector<T>(cols, [&](int64_t i, int64_t count) {
          adam.update(b.p + o + i, g * Vec::loadu(col + i, count), b.m + o + i, b.v + o + i,
                      b.vmax ? b.vmax + o + i : nullptr, count);
        });
      }
    });
  };
  auto update_vector = [&](const AdamBuffers<T>& b, const AdamVec<T>& adam, const T* grad, int64_t n) {
    cpu::for_each_vector<T>(n, [&](int64_t i, int64_t count) {
      adam.update(b.p + i, Vec::loadu(grad + i, count), b.m + i, b.v + i, b.vmax ? b.vmax + i : nullptr, count);
    });
  };
  std::vector<T> below;
  for (size_t k = depth; k-- > 0;) {
    const LayerBuffers<T>& l = layers[k];
    if (k > 0) {
      below.assign(l.in, T(0));
      cpu::matvec_transposed_add(l.weight.p, dz.data(), below.data(), l.out, l.in);
      dispatch_activation(acts[k - 1], [&](auto tag) {
        act_backward_row<decltype(tag)::value>(below.data(), below.data(), a[k].data(), l.in);
      });
    }
    update_rows(l.weight, AdamVec<T>(config, l.weight_step), dz.data(), input_of(k), l.out, l.in);
    if (l.has_bias) update_vector(l.bias, AdamVec<T>(config, l.bias_step), dz.data(), l.out);
    dz.swap(below);
  }
  return loss;
}

// The training step of a validated network (shape s, layers given by params), in one call: the whole
// step as direct loops for one example (see one_row_step), else the CPU kernels of mlp_nll, its
// backward and adam_step_, called as C++ functions.
at::Tensor network_step(const char* op, const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                        bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                        at::TensorList max_exp_avg_sqs, at::TensorList steps,
                        c10::ArrayRef<std::string> activations, const MlpShape& s, bool is_index,
                        c10::string_view reduction, double lr, double beta1, double beta2, double eps,
                        double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  const size_t depth = activations.size() + 1, per_layer = has_bias ? 2 : 1;
  std::vector<at::Tensor> weights;
  c10::List<c10::optional<at::Tensor>> biases;
  for (size_t k = 0; k < depth; ++k) {
    weights.push_back(params[k * per_layer]);
    biases.push_back(has_bias ? c10::optional<at::Tensor>(params[k * per_layer + 1]) : c10::nullopt);
  }
  bool contiguous = true;
  for (size_t i = 0; i < params.size(); ++i)
    contiguous = contiguous && all_contiguous(params[i], nullptr, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, i);
  if (s.rows == 1 && input.device().is_cpu() && contiguous) {
    const AdamConfig config = check_adam(params, {}, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1,
                                         beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay);
    const int64_t classes = s.sizes.back();
    int64_t index = 0;
    at::Tensor probs;
    if (is_index) {
      index = target.item<int64_t>();
      check_class_index(op, index, classes);
    } else {
      probs = target.reshape({classes}).contiguous();
    }
    const at::Tensor x = input.reshape({s.sizes[0]}).contiguous();
    std::vector<double> counts;
    for (const at::Tensor& step : steps) counts.push_back(advance_step(step));
    std::vector<Activation> acts;
    for (const auto& name : activations) acts.push_back(parse_activation(name));
    double loss = 0;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastffnn.one_row_step", [&] {
      using T = scalar_t;
      std::vector<LayerBuffers<T>> layers;
      for (size_t k = 0; k < depth; ++k) {
        const size_t i = k * per_layer;
        LayerBuffers<T> l{buffers<T>(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, i), {}, has_bias, counts[i], 0,
                          s.sizes[k + 1], s.sizes[k]};
        if (has_bias) {
          l.bias = buffers<T>(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, i + 1);
          l.bias_step = counts[i + 1];
        }
        layers.push_back(l);
      }
      loss = one_row_step<T>(x.const_data_ptr<T>(), layers, acts, index,
                             is_index ? nullptr : probs.const_data_ptr<T>(), config);
    });
    bump_versions(params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps);
    return at::scalar_tensor(loss, input.options());
  }

  // The CPU kernels themselves, called directly, below autograd: this is the
  // whole step, so the matrix products inside must record no graph.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto [loss, hidden, log_probs] = ops::mlp_nll<cpu::Backend>(input, weights, biases, target, activations, reduction);
  const auto grad_loss = at::ones({}, loss.options());
  c10::List<bool> mask;
  mask.push_back(false);
  for (size_t k = 0; k < depth; ++k) mask.push_back(true);
  for (size_t k = 0; k < depth; ++k) mask.push_back(has_bias);
  mask.push_back(false);
  auto [gx, gw, gb, gt] = ops::mlp_nll_backward<cpu::Backend>(grad_loss, input, weights, hidden, log_probs, target,
                                                              activations, reduction, mask);
  std::vector<at::Tensor> grads;
  for (size_t k = 0; k < depth; ++k) {
    grads.push_back(gw[k]);
    if (has_bias) grads.push_back(gb[k]);
  }
  adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
             amsgrad, maximize, decoupled_weight_decay);
  return loss;
}

at::Tensor ffnn_nll_adam_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                               bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                               at::TensorList max_exp_avg_sqs, at::TensorList steps, c10::string_view activation,
                               c10::string_view reduction, double lr, double beta1, double beta2, double eps,
                               double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  const auto args = check_train_step_args(cpu::Backend::kReducedPrecision, input, target, params, has_bias,
                                          activation, reduction);
  const NetworkShape n = args.shape.concrete();
  const std::string act(activation);
  return network_step("ffnn_nll_adam_step_", input, target, params, has_bias, exp_avgs, exp_avg_sqs,
                      max_exp_avg_sqs, steps, c10::ArrayRef<std::string>(act), MlpShape{n.rows, {n.in, n.hidden, n.out}},
                      args.is_index, reduction, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                      decoupled_weight_decay);
}

at::Tensor mlp_nll_adam_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                              bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                              at::TensorList max_exp_avg_sqs, at::TensorList steps,
                              c10::ArrayRef<std::string> activations, c10::string_view reduction, double lr,
                              double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                              bool maximize, bool decoupled_weight_decay) {
  constexpr const char* op = "mlp_nll_adam_step_";
  const auto args = check_mlp_train_step_args(op, cpu::Backend::kReducedPrecision, input, target, params, has_bias,
                                              activations, reduction);
  return network_step(op, input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                      activations, args.shape.concrete(), args.is_index, reduction, lr, beta1, beta2, eps,
                      weight_decay, amsgrad, maximize, decoupled_weight_decay);
}

// The learning rate of the tensor_lr overloads, read on the host (a CPU tensor: no device sync).
double lr_value(const char* op, const at::Tensor& lr) {
  TORCH_CHECK_VALUE(lr.device().is_cpu() && lr.numel() == 1 && lr.is_floating_point(), "fastffnn.", op,
                    ": a Tensor lr must be a floating CPU tensor with one element, got ", lr.scalar_type(),
                    " of shape ", lr.sizes(), " on ", lr.device());
  return lr.item<double>();
}

void adam_step_tensor_lr(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                         at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                         const at::Tensor& lr, double beta1, double beta2, double eps, double weight_decay,
                         bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr_value("adam_step_", lr), beta1, beta2,
             eps, weight_decay, amsgrad, maximize, decoupled_weight_decay);
}

at::Tensor ffnn_nll_adam_step_tensor_lr(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                                        bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                        at::TensorList max_exp_avg_sqs, at::TensorList steps,
                                        c10::string_view activation, c10::string_view reduction, const at::Tensor& lr,
                                        double beta1, double beta2, double eps, double weight_decay, bool amsgrad,
                                        bool maximize, bool decoupled_weight_decay) {
  return ffnn_nll_adam_step_(input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                             activation, reduction, lr_value("ffnn_nll_adam_step_", lr), beta1, beta2, eps,
                             weight_decay, amsgrad, maximize, decoupled_weight_decay);
}

at::Tensor mlp_nll_adam_step_tensor_lr(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                                       bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                                       at::TensorList max_exp_avg_sqs, at::TensorList steps,
                                       c10::ArrayRef<std::string> activations, c10::string_view reduction,
                                       const at::Tensor& lr, double beta1, double beta2, double eps,
                                       double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  return mlp_nll_adam_step_(input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                            activations, reduction, lr_value("mlp_nll_adam_step_", lr), beta1, beta2, eps,
                            weight_decay, amsgrad, maximize, decoupled_weight_decay);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastffnn, CPU, m) {
  m.impl("adam_step_", &adam_step_);
  m.impl("adam_step_.tensor_lr", &adam_step_tensor_lr);
  m.impl("ffnn_nll_adam_step_", &ffnn_nll_adam_step_);
  m.impl("ffnn_nll_adam_step_.tensor_lr", &ffnn_nll_adam_step_tensor_lr);
  m.impl("mlp_nll_adam_step_", &mlp_nll_adam_step_);
  m.impl("mlp_nll_adam_step_.tensor_lr", &mlp_nll_adam_step_tensor_lr);
}

}  // namespace fastffnn
