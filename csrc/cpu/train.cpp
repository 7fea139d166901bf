// The CPU's training steps and epochs, each one native call for a network of
// any depth: fastffnn::mlp_nll_adam_step_ (and its case of one hidden layer,
// ffnn_nll_adam_step_), mlp_nll_sgd_step_, and the epochs of them,
// mlp_nll_adam_fit_ and mlp_nll_sgd_fit_.
//
// A step is the forward and loss (fastffnn::mlp_nll), the backward
// (fastffnn::mlp_nll_backward, asked for the parameters' gradients only) and
// the optimizer's update (optim.h), with no Python and no autograd graph in
// between: the kernels are called as C++ functions, not through the
// dispatcher. One example takes direct loops instead (one_row_step). A fit
// call runs many steps over rows of its input, in a given order, without
// returning to Python between them; it runs the same code per step as the
// step ops, so its result is the Python loop's, bit for bit.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <utility>

#include "../activation.h"
#include "../checks.h"
#include "../ops.h"
#include "backend.h"
#include "optim.h"
#include "row_ops.h"

namespace fastffnn {
namespace {

using cpu::Act;
using cpu::act_backward_row;
using cpu::nll_backward_row;
using cpu::row_logsumexp;
using cpu::soft_nll_row;

// ---------------------------------------------------------------- one row
// The lecture's step, one example: with a single row every matrix product is
// a matrix-vector product, which the loops below do directly (MKL's
// single-row products are slow on the AMD CPUs this runs on, and every ATen
// call costs microseconds). The weight gradients are never stored: each is
// formed a vector at a time, as the outer product it is, and fed straight
// into the optimizer's update of the weights it belongs to.

// One layer: its weights (read by the products before they move) and the
// updates of its parameters (U: cpu::AdamUpdate or cpu::SgdUpdate).
template <typename T, typename U>
struct Layer {
  const T* w;
  U weight, bias;
  bool has_bias;
  int64_t out, in;
};

// The step's vectors, kept from one step to the next: a fit of small networks
// spent a fifth of its step in malloc and free.
template <typename T>
struct RowBuffers {
  std::vector<std::vector<T>> a;  // a[k]: the input of layer k (k >= 1)
  std::vector<T> z, dz, below;
};

template <typename T, typename U>
T one_row_step(const T* x, const std::vector<Layer<T, U>>& layers, const std::vector<Activation>& acts,
               int64_t index, const T* probs, RowBuffers<T>& buffers) {
  using Vec = at::vec::Vectorized<T>;
  const size_t depth = layers.size();
  // forward: a[k+1] = act(W_k a[k] + b_k) for the hidden layers, then the logits z, log-softmax and the loss
  std::vector<std::vector<T>>& a = buffers.a;
  a.resize(depth);
  for (size_t k = 1; k < depth; ++k) a[k].resize(layers[k].in);
  const auto input_of = [&](size_t k) { return k == 0 ? x : a[k].data(); };
  const int64_t classes = layers.back().out;
  std::vector<T>& z = buffers.z;
  std::vector<T>& dz = buffers.dz;
  z.resize(classes);
  dz.resize(classes);
  for (size_t k = 0; k < depth; ++k) {
    const Layer<T, U>& l = layers[k];
    T* out = k + 1 == depth ? z.data() : a[k + 1].data();
    cpu::matvec(l.w, input_of(k), out, l.out, l.in);
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
  // W_k^T dz times act' (before W_k moves), then the update of W_k and b_k with the weight gradient
  // formed as the outer product it is, a row at a time
  nll_backward_row(dz.data(), z.data(), lse, probs, index, T(1), classes);
  auto update_rows = [&](const U& update, const T* row_grad, const T* col, int64_t rows, int64_t cols) {
    cpu::parallel_for(0, rows, cpu::one_row_grain(cpu::kUpdateWork * cols, rows), [&](int64_t r0, int64_t r1) {
      update.rows(r0 * cols, r1 - r0, cols, [row_grad = row_grad + r0, col](int64_t r, int64_t c, int64_t count) {
        return Vec(row_grad[r]) * cpu::load_n(col + c, count);
      });
    });
  };
  std::vector<T>& below = buffers.below;
  for (size_t k = depth; k-- > 0;) {
    const Layer<T, U>& l = layers[k];
    if (k > 0) {
      below.assign(l.in, T(0));
      cpu::matvec_transposed_add(l.w, dz.data(), below.data(), l.out, l.in);
      dispatch_activation(acts[k - 1], [&](auto tag) {
        act_backward_row<decltype(tag)::value>(below.data(), below.data(), a[k].data(), l.in);
      });
    }
    update_rows(l.weight, dz.data(), input_of(k), l.out, l.in);
    if (l.has_bias) cpu::update_all(l.bias, dz.data(), l.out);
    dz.swap(below);
  }
  return loss;
}

// ---------------------------------------------------------------- steps
// The training steps of one validated network (params: [weights[0],
// biases[0], weights[1], ...], sizes n_0 ... n_L) under one optimizer O
// (cpu::Adam or cpu::Sgd), by one example or by a batch.
template <typename O>
class Trainer {
 public:
  // alpha: scikit-learn's L2 penalty on the weights (see the fit ops' schema)
  Trainer(const char* op, at::TensorList params, bool has_bias, c10::ArrayRef<std::string> activations,
          std::vector<int64_t> sizes, O& optimizer, double alpha = 0)
      : op_(op),
        params_(params),
        has_bias_(has_bias),
        activations_(activations),
        sizes_(std::move(sizes)),
        optimizer_(optimizer),
        alpha_(alpha) {
    for (const auto& name : activations) acts_.push_back(parse_activation(name));
  }

  int64_t depth() const { return static_cast<int64_t>(activations_.size()) + 1; }
  int64_t classes() const { return sizes_.back(); }

  // Whether one example can take one_row_step: it reads every array as one contiguous vector.
  bool one_row_applies() const { return cpu::all_contiguous(params_) && optimizer_.contiguous(); }

  // One example x (n_0 contiguous values) with class `index`, or probabilities `probs` (n_L).
  template <typename T>
  T row(const T* x, int64_t index, const T* probs) {
    if (!probs) check_class_index(op_, index, classes());
    const T penalty = alpha_ != 0 ? static_cast<T>(0.5 * alpha_ * weights_squared<T>()) : T(0);
    optimizer_.begin_step();
    auto& [layers, buffers] = std::get<RowScratch<T>>(scratch_);
    layers.clear();
    const size_t per_layer = has_bias_ ? 2 : 1;
    for (int64_t k = 0; k < depth(); ++k) {
      const size_t i = k * per_layer;
      const UpdateOf<T> weight = optimizer_.template bind<T>(params_, i, alpha_);
      layers.push_back({weight.p, weight,
                        has_bias_ ? optimizer_.template bind<T>(params_, i + 1) : weight, has_bias_,
                        sizes_[k + 1], sizes_[k]});
    }
    const T loss = one_row_step<T>(x, layers, acts_, index, probs, buffers);
    optimizer_.end_step();
    return loss + penalty;
  }

  // A batch, through the CPU kernels of mlp_nll, its backward and the update, called as C++ functions
  // below autograd: this is the whole step, so the matrix products inside must record no graph.
  at::Tensor batch(const at::Tensor& input, const at::Tensor& target, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const size_t per_layer = has_bias_ ? 2 : 1;
    std::vector<at::Tensor> weights;
    c10::List<c10::optional<at::Tensor>> biases;
    for (int64_t k = 0; k < depth(); ++k) {
      weights.push_back(params_[k * per_layer]);
      biases.push_back(has_bias_ ? c10::optional<at::Tensor>(params_[k * per_layer + 1]) : c10::nullopt);
    }
    auto [loss, hidden, log_probs] =
        ops::mlp_nll<cpu::Backend>(input, weights, biases, target, activations_, reduction);
    const auto grad_loss = at::ones({}, loss.options());
    c10::List<bool> mask;
    mask.push_back(false);
    for (int64_t k = 0; k < depth(); ++k) mask.push_back(true);
    for (int64_t k = 0; k < depth(); ++k) mask.push_back(has_bias_);
    mask.push_back(false);
    auto [gx, gw, gb, gt] = ops::mlp_nll_backward<cpu::Backend>(grad_loss, input, weights, hidden, log_probs,
                                                                target, activations_, reduction, mask);
    std::vector<at::Tensor> grads;
    const double rows = static_cast<double>(input.size(0));
    for (int64_t k = 0; k < depth(); ++k) {
      grads.push_back(gw[k]);
      if (has_bias_) grads.push_back(gb[k]);
    }
    if (alpha_ != 0) {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastffnn.l2_penalty", [&] {
        loss.add_(0.5 * alpha_ * weights_squared<scalar_t>() / rows);
      });
    }
    optimizer_.begin_step();
    if (one_row_applies() && cpu::all_contiguous(grads)) {
      AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastffnn.batch_update",
                                 [&] { update_together<scalar_t>(grads, rows); });
    } else {
      if (alpha_ != 0)
        for (int64_t k = 0; k < depth(); ++k) grads[k * per_layer].add_(weights[k], alpha_ / rows);
      optimizer_.apply(params_, grads);
    }
    optimizer_.end_step();
    return loss;
  }

 private:
  // Every parameter's update from its batch gradient (contiguous, like the parameters and the optimizer's
  // state), with the penalty's gradient alpha / rows * W as coupled weight decay, as one_row_step has it: one
  // parallel region over all the parameters' elements, where optimizer_.apply takes one per parameter and a
  // pass more to add the penalty.
  template <typename T>
  void update_together(const std::vector<at::Tensor>& grads, double rows) {
    using U = UpdateOf<T>;
    const size_t per_layer = has_bias_ ? 2 : 1;
    std::vector<U> updates;
    std::vector<const T*> g;
    std::vector<int64_t> start{0};
    for (size_t i = 0; i < params_.size(); ++i) {
      const bool weight = i % per_layer == 0;
      updates.push_back(optimizer_.template bind<T>(params_, i, weight && alpha_ != 0 ? alpha_ / rows : 0));
      g.push_back(grads[i].const_data_ptr<T>());
      start.push_back(start.back() + params_[i].numel());
    }
    cpu::update_concatenated(updates, g, start);
  }

  template <typename T>
  using UpdateOf = decltype(std::declval<O&>().template bind<T>(at::TensorList(), 0));
  // one_row_step's layers and vectors, reused by every step of a fit
  template <typename T>
  struct RowScratch {
    std::vector<Layer<T, UpdateOf<T>>> layers;
    RowBuffers<T> buffers;
  };

  const char* op_;
  at::TensorList params_;
  bool has_bias_;
  c10::ArrayRef<std::string> activations_;
  std::vector<Activation> acts_;
  std::vector<int64_t> sizes_;
  O& optimizer_;
  double alpha_;
  std::tuple<RowScratch<float>, RowScratch<double>> scratch_;

  // The sum of the squares of every weight (not the biases): each layer's in T, in vector lanes, then the lanes
  // and layers in double (the loss it joins is reported, not differentiated).
  template <typename T>
  double weights_squared() const {
    using Vec = at::vec::Vectorized<T>;
    double total = 0;
    const size_t per_layer = has_bias_ ? 2 : 1;
    for (int64_t k = 0; k < depth(); ++k) {
      const at::Tensor w = params_[k * per_layer].contiguous();
      const T* p = w.const_data_ptr<T>();
      const int64_t n = w.numel();
      Vec acc(T(0));
      cpu::for_each_vector<T>(0, n, [&](int64_t i, int64_t count) {
        const Vec v = cpu::load_n(p + i, count);
        acc = acc + v * v;
      });
      T lanes[Vec::size()];
      acc.store(lanes);
      for (const T lane : lanes) total += lane;
    }
    return total;
  }
};

// One training step on (input, target) of validated shape s; returns the loss.
template <typename O>
at::Tensor network_step(const char* op, const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                        bool has_bias, O& optimizer, c10::ArrayRef<std::string> activations, const MlpShape& s,
                        bool is_index, c10::string_view reduction) {
  Trainer<O> trainer(op, params, has_bias, activations, s.sizes, optimizer);
  at::Tensor loss;
  if (s.rows == 1 && input.device().is_cpu() && trainer.one_row_applies()) {
    const at::Tensor x = input.reshape({s.sizes[0]}).contiguous();
    const at::Tensor probs = is_index ? at::Tensor() : target.reshape({trainer.classes()}).contiguous();
    const int64_t index = is_index ? target.item<int64_t>() : 0;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastffnn.one_row_step", [&] {
      const scalar_t value = trainer.template row<scalar_t>(x.const_data_ptr<scalar_t>(), index,
                                                            is_index ? nullptr : probs.const_data_ptr<scalar_t>());
      loss = at::scalar_tensor(value, input.options());
    });
  } else {
    loss = trainer.batch(input, target, reduction);
  }
  optimizer.bump(params);
  return loss;
}

// Rows rows[0], ..., rows[count - 1] of the contiguous 2-D (or 1-D) tensor t, stacked: what
// t.index_select(0, rows) gives, a row at a time with memcpy. index_select copies a random row of a
// large input an element at a time: at (75000, 300) its gather of 200 rows took 100-200 us of a
// 450 us step.
at::Tensor gather_rows(const at::Tensor& t, const int64_t* rows, int64_t count) {
  std::vector<int64_t> sizes = t.sizes().vec();
  sizes[0] = count;
  at::Tensor out = at::empty(sizes, t.options());
  // from numel, not stride(0): a contiguous tensor of one row may have any stride(0)
  const int64_t row_bytes = t.numel() / t.size(0) * t.element_size();
  const char* src = static_cast<const char*>(t.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  at::parallel_for(0, count, std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(row_bytes, 1)),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i)
                       std::memcpy(dst + i * row_bytes, src + rows[i] * row_bytes, row_bytes);
                   });
  return out;
}

// Steps over the rows of input (n, n_0) and target (n,) or (n, n_L) in the
// given order, batch_size rows at a time (the last batch smaller), as the
// Python loop over order.split(batch_size) of the step op would run them;
// returns each step's loss. Every index and label is validated before the
// first step.
template <typename O>
at::Tensor network_fit(const char* op, const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                       int64_t batch_size, at::TensorList params, bool has_bias, O& optimizer,
                       c10::ArrayRef<std::string> activations, const MlpShape& s, bool is_index, double alpha) {
  const int64_t count = order.numel();
  Trainer<O> trainer(op, params, has_bias, activations, s.sizes, optimizer, alpha);
  check_fit_values(op, input, target, order, is_index, trainer.classes());
  const int64_t steps = (count + batch_size - 1) / batch_size;
  at::Tensor losses = at::empty({steps}, input.options());
  const at::Tensor x = input.contiguous(), t = target.contiguous(), rows = order.contiguous();
  const bool one_row = trainer.one_row_applies();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "fastffnn.fit", [&] {
    using T = scalar_t;
    const int64_t* r = rows.const_data_ptr<int64_t>();
    T* out = losses.data_ptr<T>();
    for (int64_t step = 0; step < steps; ++step) {
      const int64_t begin = step * batch_size, end = std::min(count, begin + batch_size);
      if (end - begin == 1 && one_row) {
        const int64_t row = r[begin];
        out[step] = trainer.template row<T>(x.const_data_ptr<T>() + row * s.sizes[0],
                                            is_index ? t.const_data_ptr<int64_t>()[row] : 0,
                                            is_index ? nullptr : t.const_data_ptr<T>() + row * trainer.classes());
      } else {
        out[step] = trainer.batch(gather_rows(x, r + begin, end - begin), gather_rows(t, r + begin, end - begin),
                                  "mean").template item<T>();
      }
    }
  });
  optimizer.bump(params);
  return losses;
}

// ---------------------------------------------------------------- the ops
cpu::Adam make_adam(const char* op, at::TensorList params, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                    at::TensorList max_exp_avg_sqs, at::TensorList steps, double lr, double beta1, double beta2,
                    double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  return cpu::make_adam(op, params, {}, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps,
                        {lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay});
}

at::Tensor ffnn_nll_adam_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                               bool has_bias, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                               at::TensorList max_exp_avg_sqs, at::TensorList steps, c10::string_view activation,
                               c10::string_view reduction, double lr, double beta1, double beta2, double eps,
                               double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  constexpr const char* op = "ffnn_nll_adam_step_";
  const auto args = check_train_step_args(cpu::Backend::kReducedPrecision, input, target, params, has_bias,
                                          activation, reduction);
  const NetworkShape n = args.shape.concrete();
  const std::string act(activation);
  cpu::Adam adam = make_adam(op, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
                             weight_decay, amsgrad, maximize, decoupled_weight_decay);
  return network_step(op, input, target, params, has_bias, adam, c10::ArrayRef<std::string>(act),
                      MlpShape{n.rows, {n.in, n.hidden, n.out}}, args.is_index, reduction);
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
  cpu::Adam adam = make_adam(op, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
                             weight_decay, amsgrad, maximize, decoupled_weight_decay);
  return network_step(op, input, target, params, has_bias, adam, activations, args.shape.concrete(), args.is_index,
                      reduction);
}

at::Tensor mlp_nll_sgd_step_(const at::Tensor& input, const at::Tensor& target, at::TensorList params,
                             bool has_bias, at::TensorList momentum_buffers, const c10::List<bool>& fresh,
                             c10::ArrayRef<std::string> activations, c10::string_view reduction, double lr,
                             double momentum, double dampening, double weight_decay, bool nesterov, bool maximize) {
  constexpr const char* op = "mlp_nll_sgd_step_";
  const auto args = check_mlp_train_step_args(op, cpu::Backend::kReducedPrecision, input, target, params, has_bias,
                                              activations, reduction);
  cpu::Sgd sgd = cpu::make_sgd(op, params, {}, momentum_buffers, fresh,
                               {lr, momentum, dampening, weight_decay, nesterov, maximize});
  return network_step(op, input, target, params, has_bias, sgd, activations, args.shape.concrete(), args.is_index,
                      reduction);
}

at::Tensor mlp_nll_adam_fit_(const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                             int64_t batch_size, at::TensorList params, bool has_bias, at::TensorList exp_avgs,
                             at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                             c10::ArrayRef<std::string> activations, double lr, double beta1, double beta2,
                             double eps, double weight_decay, bool amsgrad, bool maximize,
                             bool decoupled_weight_decay, double alpha, bool eps_before_correction) {
  constexpr const char* op = "mlp_nll_adam_fit_";
  const auto args = check_mlp_fit_args(op, cpu::Backend::kReducedPrecision, input, target, order, batch_size,
                                       params, has_bias, activations, alpha, maximize,
                                       decoupled_weight_decay && weight_decay != 0);
  cpu::Adam adam = make_adam(op, params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps,
                             weight_decay, amsgrad, maximize, decoupled_weight_decay);
  adam.config.eps_before_correction = eps_before_correction;
  return network_fit(op, input, target, order, batch_size, params, has_bias, adam, activations,
                     args.shape.concrete(), args.is_index, alpha);
}

at::Tensor mlp_nll_sgd_fit_(const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                            int64_t batch_size, at::TensorList params, bool has_bias, at::TensorList momentum_buffers,
                            const c10::List<bool>& fresh, c10::ArrayRef<std::string> activations, double lr,
                            double momentum, double dampening, double weight_decay, bool nesterov, bool maximize,
                            double alpha) {
  constexpr const char* op = "mlp_nll_sgd_fit_";
  const auto args = check_mlp_fit_args(op, cpu::Backend::kReducedPrecision, input, target, order, batch_size,
                                       params, has_bias, activations, alpha, maximize, false);
  cpu::Sgd sgd = cpu::make_sgd(op, params, {}, momentum_buffers, fresh,
                               {lr, momentum, dampening, weight_decay, nesterov, maximize});
  return network_fit(op, input, target, order, batch_size, params, has_bias, sgd, activations,
                     args.shape.concrete(), args.is_index, alpha);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastffnn, CPU, m) {
// The emulated build registers csrc/cuda/train_cuda.cpp's steps and epochs for CPU tensors instead, so that they run
// the CUDA kernels under the emulator.
#ifndef FASTFFNN_CUDA_EMULATION
  m.impl("ffnn_nll_adam_step_", &ffnn_nll_adam_step_);
  m.impl("ffnn_nll_adam_step_.tensor_lr", &fastffnn::ffnn_adam_step_tensor_lr<&ffnn_nll_adam_step_>);
  m.impl("mlp_nll_adam_step_", &mlp_nll_adam_step_);
  m.impl("mlp_nll_adam_step_.tensor_lr", &fastffnn::mlp_adam_step_tensor_lr<&mlp_nll_adam_step_>);
  m.impl("mlp_nll_sgd_step_", &mlp_nll_sgd_step_);
  m.impl("mlp_nll_adam_fit_", &mlp_nll_adam_fit_);
  m.impl("mlp_nll_sgd_fit_", &mlp_nll_sgd_fit_);
#endif
}

}  // namespace fastffnn
