// The optimizers' per-element updates, shared by the multi-tensor kernels of
// optim.cu and the one-block epoch of row_fit.cu: torch.optim.Adam's and
// torch.optim.SGD's single-tensor math, computed in Acc.
#pragma once

#include "common.cuh"

namespace fastffnn::cuda {

__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ double dev_pow(double x, double y) { return pow(x, y); }

template <typename Acc>
struct AdamConstants {
  Acc w1, b2, w2, eps, wd, decay;  // 1 - beta1, beta2, 1 - beta2, eps, weight_decay, 1 - lr * weight_decay
  bool weight_decay, decoupled, maximize;
};

// One element's step: grad is its gradient; nss = -lr / (1 - beta1^t), ibc = 1 / sqrt(1 - beta2^t) and eps
// the step's constants; vmax is null without amsgrad.
template <typename T, typename Acc>
__device__ __forceinline__ void adam_element(Acc grad, T* p, T* m, T* v, T* vmax, Acc nss, Acc ibc, Acc eps,
                                             const AdamConstants<Acc>& c) {
  if (c.maximize) grad = -grad;
  Acc param = static_cast<Acc>(*p);
  if (c.weight_decay) {
    if (c.decoupled)
      param *= c.decay;
    else
      grad += param * c.wd;
  }
  Acc mi = static_cast<Acc>(*m);
  mi += c.w1 * (grad - mi);  // torch's lerp for weights below 0.5
  const Acc vi = static_cast<Acc>(*v) * c.b2 + c.w2 * grad * grad;
  Acc second = vi;
  if (vmax) {
    second = nan_max(static_cast<Acc>(*vmax), vi);
    *vmax = static_cast<T>(second);
  }
  const Acc denom = dev_sqrt(second) * ibc + eps;
  *p = static_cast<T>(param + nss * (mi / denom));
  *m = static_cast<T>(mi);
  *v = static_cast<T>(vi);
}

template <typename Acc>
struct SgdConstants {
  Acc neg_lr, wd, momentum, keep;  // keep: 1 - dampening
  bool weight_decay, nesterov, maximize;
};

// One element's step; buf is null without momentum, and fresh says it holds nothing yet (torch's None).
template <typename T, typename Acc>
__device__ __forceinline__ void sgd_element(Acc grad, T* p, T* buf, bool fresh, const SgdConstants<Acc>& c) {
  if (c.maximize) grad = -grad;
  const Acc param = static_cast<Acc>(*p);
  if (c.weight_decay) grad += param * c.wd;
  if (buf) {
    const Acc b = fresh ? grad : static_cast<Acc>(*buf) * c.momentum + grad * c.keep;
    *buf = static_cast<T>(b);
    grad = c.nesterov ? grad + b * c.momentum : b;
  }
  *p = static_cast<T>(param + grad * c.neg_lr);
}

}  // namespace fastffnn::cuda
