// The CPU's optimizer updates: torch.optim.Adam's and torch.optim.SGD's, a
// vector of parameters at a time, for fastffnn::adam_step_ and sgd_step_
// (optim.cpp) and for the training steps and epochs that form their
// gradients themselves (train.cpp).
//
// Each rule is bound to one parameter's arrays (AdamUpdate, SgdUpdate), so
// the training loops feed it a gradient vector wherever they form one: a
// weight gradient of one example is an outer product, formed a vector at a
// time and never stored.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "row_ops.h"

namespace fastffnn::cpu {

// An element's update costs about as much as kUpdateWork multiply-adds (Adam:
// a square root and a division, whose unit takes a dozen cycles per vector,
// and a dozen other operations), which is how one_row_grain weighs it: a
// 256 x 256 layer's update is worth both threads, its 256 x 256 product is not.
constexpr int64_t kUpdateWork = 8;

// ---------------------------------------------------------------- Adam
// torch.optim.Adam's update of one vector of parameters, with the step's
// constants computed once.
template <typename T>
struct AdamVec {
  using Vec = at::vec::Vectorized<T>;
  Vec neg_step_size, inv_bc2_sqrt, w1, b2, w2, eps, wd, decay;
  bool weight_decay, decoupled, amsgrad, maximize;

  // beta1_t, beta2_t: beta1 and beta2 to the power of the step count
  AdamVec(const AdamConfig& c, double beta1_t, double beta2_t)
      : neg_step_size(static_cast<T>(-c.lr / (1 - beta1_t))),
        inv_bc2_sqrt(static_cast<T>(1 / std::sqrt(1 - beta2_t))),
        w1(static_cast<T>(1 - c.beta1)),
        b2(static_cast<T>(c.beta2)),
        w2(static_cast<T>(1 - c.beta2)),
        // scikit-learn: lr * sqrt(bc2) / bc1 * m / (sqrt(v) + eps), which is
        // torch's form with eps / sqrt(bc2) in place of eps
        eps(static_cast<T>(c.eps_before_correction ? c.eps / std::sqrt(1 - beta2_t) : c.eps)),
        wd(static_cast<T>(c.weight_decay)),
        decay(static_cast<T>(1 - c.lr * c.weight_decay)),
        weight_decay(c.weight_decay != 0),
        decoupled(c.decoupled_weight_decay),
        amsgrad(c.amsgrad),
        maximize(c.maximize) {}

  // Elements [begin, end) of p, m, v and vmax (null without amsgrad), with
  // gradient grad(i, count), the vector of elements i, ..., i + count - 1.
  template <typename Grad>
  void run(T* p, T* m, T* v, T* vmax, int64_t begin, int64_t end, const Grad& grad) const {
    // Local copies: every store through T* may alias this object's vector
    // members (x86's vector types are may_alias), so read in place they
    // would be reloaded after each store, which made the loop half as fast.
    const Vec nss = neg_step_size, ibc = inv_bc2_sqrt, w1_ = w1, b2_ = b2, w2_ = w2, eps_ = eps, wd_ = wd,
              decay_ = decay;
    const bool wdecay = weight_decay, dec = decoupled, ams = amsgrad, maxi = maximize;
    for_each_vector<T>(begin, end, [&](int64_t i, int64_t count) {
      Vec gv = grad(i, count);
      if (maxi) gv = gv.neg();
      Vec pv = load_n(p + i, count);
      if (wdecay) {
        if (dec)
          pv = pv * decay_;
        else
          gv = gv + pv * wd_;
      }
      Vec mv = load_n(m + i, count);
      mv = mv + w1_ * (gv - mv);  // torch's lerp for weights below 0.5
      const Vec vv = load_n(v + i, count) * b2_ + w2_ * gv * gv;
      Vec second = vv;
      if (ams) {
        second = at::vec::maximum(load_n(vmax + i, count), vv);
        store_n(second, vmax + i, count);
      }
      // torch divides by sqrt(1 - beta2^t); multiplying by its reciprocal
      // differs by an ulp and leaves one division a vector.
      const Vec denom = second.sqrt() * ibc + eps_;
      store_n(pv + nss * (mv / denom), p + i, count);
      store_n(mv, m + i, count);
      store_n(vv, v + i, count);
    });
  }
};

// Adam bound to one parameter's arrays (vmax null without amsgrad).
template <typename T>
struct AdamUpdate {
  AdamVec<T> rule;
  T *p, *m, *v, *vmax;
  // Elements [begin, end) with gradient grad(i, count) (see AdamVec::run).
  template <typename Grad>
  void operator()(int64_t begin, int64_t end, const Grad& grad) const {
    rule.run(p, m, v, vmax, begin, end, grad);
  }
};

// ---------------------------------------------------------------- SGD
// torch.optim.SGD's update of one vector of parameters (its single-tensor
// form): the gradient, negated under maximize, plus weight_decay * p; with
// momentum the buffer becomes that gradient on its first step and
// momentum * buf + (1 - dampening) * g after; nesterov steps along
// g + momentum * buf, otherwise along buf; p -= lr * step.
template <typename T>
struct SgdVec {
  using Vec = at::vec::Vectorized<T>;
  Vec neg_lr, wd, momentum, keep;
  bool weight_decay, has_momentum, nesterov, maximize;

  explicit SgdVec(const SgdConfig& c)
      : neg_lr(static_cast<T>(-c.lr)),
        wd(static_cast<T>(c.weight_decay)),
        momentum(static_cast<T>(c.momentum)),
        keep(static_cast<T>(1 - c.dampening)),
        weight_decay(c.weight_decay != 0),
        has_momentum(c.momentum != 0),
        nesterov(c.nesterov),
        maximize(c.maximize) {}

  // Elements [begin, end) of p and buf (null without momentum; fresh: it
  // holds nothing yet), with gradient grad(i, count) (see AdamVec::run).
  template <typename Grad>
  void run(T* p, T* buf, bool fresh, int64_t begin, int64_t end, const Grad& grad) const {
    const Vec nlr = neg_lr, wd_ = wd, mom = momentum, keep_ = keep;
    const bool wdecay = weight_decay, with_momentum = has_momentum, nest = nesterov, maxi = maximize;
    for_each_vector<T>(begin, end, [&](int64_t i, int64_t count) {
      Vec g = grad(i, count);
      if (maxi) g = g.neg();
      const Vec pv = load_n(p + i, count);
      if (wdecay) g = g + pv * wd_;
      if (with_momentum) {
        const Vec b = fresh ? g : load_n(buf + i, count) * mom + g * keep_;
        store_n(b, buf + i, count);
        g = nest ? g + b * mom : b;
      }
      store_n(pv + g * nlr, p + i, count);
    });
  }
};

template <typename T>
struct SgdUpdate {
  SgdVec<T> rule;
  T *p, *buf;
  bool fresh;
  template <typename Grad>
  void operator()(int64_t begin, int64_t end, const Grad& grad) const {
    rule.run(p, buf, fresh, begin, end, grad);
  }
};

// ---------------------------------------------------------------- helpers
// Applies `update` (an AdamUpdate or SgdUpdate) to all n elements of its
// parameter, with gradient g, split across threads.
template <typename T, typename U>
void update_all(const U& update, const T* g, int64_t n) {
  at::parallel_for(0, n, one_row_grain(kUpdateWork, n), [&](int64_t begin, int64_t end) {
    update(begin, end, [g](int64_t i, int64_t count) { return load_n(g + i, count); });
  });
}

// Applies updates[i] (an AdamUpdate or SgdUpdate) to all elements of
// parameter i with gradient grads[i], for every i, in one parallel region:
// parameter i holds elements [start[i], start[i + 1]) of one index range,
// which the threads split evenly. Each element's update is the same whatever
// the split.
template <typename T, typename U>
void update_concatenated(const std::vector<U>& updates, const std::vector<const T*>& grads,
                         const std::vector<int64_t>& start) {
  const int64_t total = start.back();
  at::parallel_for(0, total, one_row_grain(kUpdateWork, total), [&](int64_t begin, int64_t end) {
    for (size_t i = 0; i < updates.size(); ++i) {
      const int64_t lo = std::max(begin, start[i]), hi = std::min(end, start[i + 1]);
      if (lo >= hi) continue;
      const T* g = grads[i];
      updates[i](lo - start[i], hi - start[i], [g](int64_t j, int64_t count) { return load_n(g + j, count); });
    }
  });
}

// Records an in-place update in each tensor's version counter, as the
// in-place ops of torch.optim do, so that autograd refuses a backward through
// a graph that saved a parameter before the step ("modified by an inplace
// operation") instead of silently using the new values.
inline void bump_versions(std::initializer_list<at::TensorList> lists) {
  for (at::TensorList list : lists)
    for (const at::Tensor& t : list)
      if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

inline bool all_contiguous(at::TensorList list) {
  for (const at::Tensor& t : list)
    if (!t.is_contiguous()) return false;
  return true;
}


// ---------------------------------------------------------------- optimizers
// An optimizer over a list of parameters, as the training loops drive it:
// begin_step() before a step's updates, bind<T>(params, i, l2) for the update of
// parameter i, apply(params, grads) to update with stored gradients,
// end_step() after, and bump(params) once the call is done.


struct Adam {
  at::TensorList exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;  // max_exp_avg_sqs empty without amsgrad
  AdamConfig config;
  std::vector<double> counts;  // the step count of each parameter in the current step
  std::vector<std::pair<double, double>> powers;  // beta1 and beta2 to the power of counts[i]

  // Every counter first, as torch.optim.Adam advances them. The powers once per distinct count (the
  // counters usually move together): pow was about 4% of a step on digits, FFNN(64, 64, 10) (perf).
  void begin_step() {
    counts.clear();
    powers.clear();
    for (const at::Tensor& s : steps) {
      const double t = advance_step(s);
      powers.push_back(!counts.empty() && counts.back() == t
                           ? powers.back()
                           : std::make_pair(std::pow(config.beta1, t), std::pow(config.beta2, t)));
      counts.push_back(t);
    }
  }
  void end_step() {}
  bool contiguous() const {
    return all_contiguous(exp_avgs) && all_contiguous(exp_avg_sqs) && all_contiguous(max_exp_avg_sqs);
  }
  // l2: the coefficient of an L2 penalty on the loss (scikit-learn's alpha / rows on a weight), whose gradient
  // l2 * p is coupled weight decay: it joins weight_decay (check_mlp_fit_args refuses it beside decoupled decay)
  template <typename T>
  AdamUpdate<T> bind(at::TensorList params, size_t i, double l2 = 0) const {
    AdamConfig c = config;
    if (l2 != 0) {
      c.weight_decay += l2;
      c.decoupled_weight_decay = false;  // decoupled_weight_decay with no weight_decay of its own
    }
    return {AdamVec<T>(c, powers[i].first, powers[i].second), params[i].data_ptr<T>(), exp_avgs[i].data_ptr<T>(),
            exp_avg_sqs[i].data_ptr<T>(), max_exp_avg_sqs.empty() ? nullptr : max_exp_avg_sqs[i].data_ptr<T>()};
  }
  void apply(at::TensorList params, at::TensorList grads) const;
  void bump(at::TensorList params) const {
    bump_versions({params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps});
  }
};

struct Sgd {
  at::TensorList buffers;  // the momentum buffers; empty without momentum
  std::vector<bool> fresh;  // whether buffers[i] holds nothing yet (torch.optim.SGD's None)
  SgdConfig config;

  void begin_step() {}
  void end_step() { fresh.assign(fresh.size(), false); }
  bool contiguous() const { return all_contiguous(buffers); }
  template <typename T>
  SgdUpdate<T> bind(at::TensorList params, size_t i, double l2 = 0) const {
    const bool momentum = !buffers.empty();
    SgdConfig c = config;
    c.weight_decay += l2;  // as Adam's
    return {SgdVec<T>(c), params[i].data_ptr<T>(), momentum ? buffers[i].data_ptr<T>() : nullptr,
            momentum && fresh[i]};
  }
  void apply(at::TensorList params, at::TensorList grads) const;
  void bump(at::TensorList params) const { bump_versions({params, buffers}); }
};

// The optimizers of the ops, their lists and hyper-parameters validated
// (grads may be empty: the training steps form the gradients themselves).
Adam make_adam(const char* op, at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
               at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
               const AdamConfig& config);
Sgd make_sgd(const char* op, at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
             const c10::List<bool>& fresh, const SgdConfig& config);

}  // namespace fastffnn::cpu
