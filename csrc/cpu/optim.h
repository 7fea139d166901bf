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

#include <array>
#include <cmath>
#if defined(__SSE__) || defined(_M_X64)
#include <xmmintrin.h>
#endif
#include <vector>

#include "../checks.h"
#include "row_ops.h"

namespace fastffnn::cpu {

// An element's update costs about as much as kUpdateWork multiply-adds (Adam:
// a square root and a division, whose unit takes a dozen cycles per vector,
// and a dozen other operations), which is how one_row_grain weighs it: a
// 256 x 256 layer's update is worth both threads, its 256 x 256 product is not.
constexpr int64_t kUpdateWork = 8;

// ---------------------------------------------------------------- subnormals
// Flush-to-zero and denormals-are-zero on the calling thread for the guard's
// life (x86's MXCSR; elsewhere nothing), restoring the caller's mode after.
// The optimizers' states decay geometrically where a gradient is zero (Adam's
// m by beta1 a step: a pixel that is always blank on digits), into subnormal
// values, and x86 takes a slow path for them: the updates of a digits step
// at batch 1 took twice as long. Flushed, a state below the smallest normal
// (1.2e-38 in float32, 2.2e-308 in float64) becomes 0 (or, where m - w1 * m
// is not one fused multiply-add, stops below 16 times that, once w1 * m
// flushes to 0), and the parameter moves by less than lr * 1.9e-37 / eps a
// step (float32) differently from torch.optim: nothing, next to any
// parameter above ~1e-25. Each update sets the mode
// itself, on whichever thread runs it, so the result never depends on the
// thread count.
class SubnormalsFlushed {
 public:
#if defined(__SSE__) || defined(_M_X64)
  explicit SubnormalsFlushed(bool on) : on_(on), saved_(on ? _mm_getcsr() : 0) {
    if (on_) _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
  }
  ~SubnormalsFlushed() {
    if (on_) _mm_setcsr(saved_);
  }

 private:
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  bool on_;
  unsigned saved_;
#else
  explicit SubnormalsFlushed(bool) {}
#endif
  SubnormalsFlushed(const SubnormalsFlushed&) = delete;
  SubnormalsFlushed& operator=(const SubnormalsFlushed&) = delete;
};

// Adam flushes only where eps bounds the effect: with eps = 1e-16 a flushed m moves a parameter by at most
// lr * 1.9e-21 a step differently. Below it (eps = 0, say), every subnormal is kept, as torch.optim keeps it.
constexpr double kFlushMinEps = 1e-16;

// op(r, c, i, count) for the vectors of a block of rows: row r in [0, rows) and its elements c, ...,
// c + count - 1 (c in [0, cols)), which are elements i = offset + r * cols + c, ... of the arrays.
template <typename T, typename Op>
inline void for_each_block_vector(int64_t offset, int64_t rows, int64_t cols, const Op& op) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = offset + r * cols;
    for_each_vector<T>(0, cols, [&](int64_t c, int64_t count) { op(r, c, o + c, count); });
  }
}

// ---------------------------------------------------------------- Adam
// torch.optim.Adam's update of one vector of parameters, with the step's
// constants computed once.
template <typename T>
struct AdamVec {
  using Vec = at::vec::Vectorized<T>;
  Vec neg_step_size, inv_bc2_sqrt, w1, b2, w2, eps, wd, decay;
  bool weight_decay, decoupled, amsgrad, maximize, flush;

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
        maximize(c.maximize),
        flush(c.eps >= kFlushMinEps) {}

  // Elements offset + r * cols + c of p, m, v and vmax (null without
  // amsgrad), for r in [0, rows) and c in [0, cols): a block of rows, each
  // with gradient grad(r, c, count), the vector of its elements c, ...,
  // c + count - 1. The one-row step updates a layer's weights a block of rows
  // at a time: called once a row, the set-up (the constants, the choice of
  // loop for the options) cost about a third as much as a 64-wide row's update.
  template <typename Grad>
  void run(T* p, T* m, T* v, T* vmax, int64_t offset, int64_t rows, int64_t cols, const Grad& grad) const {
    const SubnormalsFlushed flushed(flush);
    if (amsgrad || maximize || (weight_decay && decoupled))
      run_options<kAnyOptions>(p, m, v, vmax, offset, rows, cols, grad);
    else if (weight_decay)
      run_options<kCoupledDecay>(p, m, v, vmax, offset, rows, cols, grad);
    else
      run_options<kNoOptions>(p, m, v, vmax, offset, rows, cols, grad);
  }

 private:
  // The options known at compile time for the common cases (scikit-learn's penalty is coupled decay). GCC did
  // not hoist their tests out of the loop over a block's rows: they, and the set-up they branch around, took
  // a third of the loop's instructions.
  enum Options { kNoOptions, kCoupledDecay, kAnyOptions };
  template <Options kOptions, typename Grad>
  void run_options(T* p, T* m, T* v, T* vmax, int64_t offset, int64_t rows, int64_t cols, Grad grad) const {
    // Local copies (grad by value too): every store through T* may alias this object's vector members (x86's
    // vector types are may_alias), so read in place they would be reloaded after each store, which made the
    // loop half as fast.
    const Vec nss = neg_step_size, ibc = inv_bc2_sqrt, w1_ = w1, b2_ = b2, w2_ = w2, eps_ = eps, wd_ = wd,
              decay_ = decay;
    const bool any = kOptions == kAnyOptions, wdecay = kOptions == kCoupledDecay || (any && weight_decay),
               dec = any && decoupled, ams = any && amsgrad, maxi = any && maximize;
    for_each_block_vector<T>(offset, rows, cols, [&](int64_t r, int64_t c, int64_t i, int64_t count) {
      Vec gv = grad(r, c, count);
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
  // Elements [begin, end) with gradient grad(i, count), the vector of elements i, ..., i + count - 1.
  template <typename Grad>
  void operator()(int64_t begin, int64_t end, const Grad& grad) const {
    rule.run(p, m, v, vmax, begin, 1, end - begin,
             [&](int64_t, int64_t c, int64_t count) { return grad(begin + c, count); });
  }
  // A block of rows (see AdamVec::run).
  template <typename Grad>
  void rows(int64_t offset, int64_t rows, int64_t cols, const Grad& grad) const {
    rule.run(p, m, v, vmax, offset, rows, cols, grad);
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

  // Elements offset + r * cols + c of p and buf (null without momentum;
  // fresh: it holds nothing yet), with gradient grad(r, c, count) (see
  // AdamVec::run).
  template <typename Grad>
  void run(T* p, T* buf, bool fresh, int64_t offset, int64_t rows, int64_t cols, Grad grad) const {
    const SubnormalsFlushed flushed(true);  // a flushed buffer moves p by at most lr * 1.2e-38 (float32) less
    const Vec nlr = neg_lr, wd_ = wd, mom = momentum, keep_ = keep;
    const bool wdecay = weight_decay, with_momentum = has_momentum, nest = nesterov, maxi = maximize;
    for_each_block_vector<T>(offset, rows, cols, [&](int64_t r, int64_t c, int64_t i, int64_t count) {
      Vec g = grad(r, c, count);
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
    rule.run(p, buf, fresh, begin, 1, end - begin,
             [&](int64_t, int64_t c, int64_t count) { return grad(begin + c, count); });
  }
  template <typename Grad>
  void rows(int64_t offset, int64_t rows, int64_t cols, const Grad& grad) const {
    rule.run(p, buf, fresh, offset, rows, cols, grad);
  }
};

// ---------------------------------------------------------------- helpers
// Applies `update` (an AdamUpdate or SgdUpdate) to all n elements of its
// parameter, with gradient g, split across threads.
template <typename T, typename U>
void update_all(const U& update, const T* g, int64_t n) {
  parallel_for(0, n, one_row_grain(kUpdateWork, n), [&](int64_t begin, int64_t end) {
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
  parallel_for(0, total, one_row_grain(kUpdateWork, total), [&](int64_t begin, int64_t end) {
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
  // Each parameter's p, m, v and vmax, taken at the first bind: the same for every step of a call, and a
  // fit's one-row step spent about a tenth of its time in data_ptr's checks when bind took them each step.
  std::vector<std::array<void*, 4>> arrays;

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
  AdamUpdate<T> bind(at::TensorList params, size_t i, double l2 = 0) {
    AdamConfig c = config;
    if (l2 != 0) {
      c.weight_decay += l2;
      c.decoupled_weight_decay = false;  // decoupled_weight_decay with no weight_decay of its own
    }
    if (arrays.empty())
      for (size_t j = 0; j < params.size(); ++j)
        arrays.push_back({params[j].data_ptr(), exp_avgs[j].data_ptr(), exp_avg_sqs[j].data_ptr(),
                          max_exp_avg_sqs.empty() ? nullptr : max_exp_avg_sqs[j].data_ptr()});
    const auto& a = arrays[i];
    return {AdamVec<T>(c, powers[i].first, powers[i].second), static_cast<T*>(a[0]), static_cast<T*>(a[1]),
            static_cast<T*>(a[2]), static_cast<T*>(a[3])};
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
  std::vector<std::array<void*, 2>> arrays;  // each parameter's p and buffer (see Adam::arrays)

  void begin_step() {}
  void end_step() { fresh.assign(fresh.size(), false); }
  bool contiguous() const { return all_contiguous(buffers); }
  template <typename T>
  SgdUpdate<T> bind(at::TensorList params, size_t i, double l2 = 0) {
    const bool momentum = !buffers.empty();
    SgdConfig c = config;
    c.weight_decay += l2;  // as Adam's
    if (arrays.empty())
      for (size_t j = 0; j < params.size(); ++j)
        arrays.push_back({params[j].data_ptr(), momentum ? buffers[j].data_ptr() : nullptr});
    return {SgdVec<T>(c), static_cast<T*>(arrays[i][0]), static_cast<T*>(arrays[i][1]), momentum && fresh[i]};
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
