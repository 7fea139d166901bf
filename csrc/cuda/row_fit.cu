// The per-example epoch on CUDA in one launch per kRowFitStepsPerLaunch steps: every step of a fit call at
// batch 1 (the lecture's loop) run by one thread block that loops over the
// examples, for networks small enough that one SM does a step faster than
// the launches of the per-step route could.
//
// A step at batch 1 is a few matrix-vector products and the optimizer's
// update of every parameter: (300,100,2) has 30,302 parameters, about 0.8 MB
// of parameter and state traffic a step, a few microseconds of one SM's share
// of L2. The per-step route (train_cuda.cpp: gather, the fused forward and
// backward, cuBLAS for the weight gradients, the update, the loss copy) is
// about eight launches a step, each several microseconds of host time: the
// GPU would wait on the host. Here the host launches once per fit call.
//
// One block of kThreads threads, per step:
// * forward: one warp per output row (the weights read along the row,
//   coalesced), each hidden layer's activations kept in shared memory; the
//   input row is read from global memory where it lies (no gather);
// * loss: log-softmax and NLL (class index or probability row) by one warp;
// * backward, from the top layer down: each thread forms the input gradient
//   of some columns (W^T dz, read across the rows, coalesced) from the
//   weights before they move, then every thread updates a stride of the
//   layer's weights with the gradient formed in place, dz[j] * a[i], never
//   stored (as the CPU's one-row step does), then the bias.
// Barriers separate the layers; the reductions are warp butterflies in a
// fixed order, so the results do not depend on timing. The step counters are
// CPU tensors: the host reads them once, the block computes step s's bias
// corrections from t0 + s + 1, and the host advances the counters by the
// number of steps after the launch. A call of more than kRowFitStepsPerLaunch
// steps is several launches, one after another on the stream.
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../checks.h"
#include "common.cuh"
#include "row_fit.h"
#include "updates.cuh"

namespace fastffnn::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxLayers = 16;
constexpr int kMaxParams = 2 * kMaxLayers;

// The block's shared memory, in elements: the input of layer k >= 1 at act[k], the logits at act[depth], two
// vectors of the widest layer for dz and the gradient below it, kWarps partial sums, and each parameter's three
// step constants; `words` in all.
struct Layout {
  int64_t act[kMaxLayers + 1];
  int64_t dz, below, partial, constants, words;
};

Layout lay_out(c10::ArrayRef<int64_t> sizes) {
  Layout l{};
  int64_t at = 0, widest = 0;
  for (size_t k = 1; k < sizes.size(); ++k) {
    l.act[k] = at;
    at += sizes[k];
  }
  for (const int64_t n : sizes) widest = std::max(widest, n);
  l.dz = at;
  l.below = at + widest;
  l.partial = at + 2 * widest;
  l.constants = l.partial + kWarps;
  l.words = l.constants + 3 * kMaxParams;
  return l;
}

template <typename T>
struct RowFitArgs {
  const T* x;            // input (n, n_0), contiguous
  const int64_t* index;  // class indices (n,), or null
  const T* probs;        // probability rows (n, n_L), or null
  const int64_t* rows;   // the order's rows, one a step
  T* losses;             // (steps,)
  int64_t steps;
  int depth;
  bool has_bias;
  T alpha;  // scikit-learn's L2 penalty
  int64_t sizes[kMaxLayers + 1];
  Activation acts[kMaxLayers];
  Layout layout;
  // parameter i (weights[0], biases[0], weights[1], ...) and its state: Adam's exp_avg, exp_avg_sq and max_exp_avg_sq
  // (null without amsgrad), or SGD's momentum buffer in s1 (null without momentum)
  T* p[kMaxParams];
  T* s1[kMaxParams];
  T* s2[kMaxParams];
  T* s3[kMaxParams];
  double t0[kMaxParams];  // Adam: the step count before the call
  bool fresh[kMaxParams];  // SGD: the buffer holds nothing before the first step
  double lr, log_beta1, log_beta2, eps;
  bool eps_before_correction;
};

// Adam's update of element e of parameter q, whose step constants are k[0..2]
template <typename T>
struct AdamStep {
  AdamConstants<T> c;
  __device__ void operator()(const RowFitArgs<T>& a, const T* k, int q, int64_t e, T grad, int64_t) const {
    adam_element(grad, a.p[q] + e, a.s1[q] + e, a.s2[q] + e, a.s3[q] ? a.s3[q] + e : nullptr, k[0], k[1], k[2], c);
  }
};

template <typename T>
struct SgdStep {
  SgdConstants<T> c;
  __device__ void operator()(const RowFitArgs<T>& a, const T*, int q, int64_t e, T grad, int64_t step) const {
    sgd_element(grad, a.p[q] + e, a.s1[q] ? a.s1[q] + e : nullptr, step == 0 && a.fresh[q], c);
  }
};

template <typename T, typename Update>
__global__ void __launch_bounds__(kThreads, 1) row_fit_kernel(RowFitArgs<T> a, Update update) {
  FASTFFNN_DYNAMIC_SHARED(double, smem_words);
  T* smem = reinterpret_cast<T*>(smem_words);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int depth = a.depth, per_layer = a.has_bias ? 2 : 1, params = depth * per_layer;
  const int64_t classes = a.sizes[depth];
  T* z = smem + a.layout.act[depth];
  T* dz_buffer = smem + a.layout.dz;
  T* below_buffer = smem + a.layout.below;
  T* partial = smem + a.layout.partial;
  T* constants = smem + a.layout.constants;
  for (int64_t s = 0; s < a.steps; ++s) {
    const int64_t row = a.rows[s];
    const T* x = a.x + row * a.sizes[0];
    // this step's constants of each parameter: Adam's -lr / (1 - beta1^t), 1 / sqrt(1 - beta2^t) and eps
    if (tid < params) {
      // beta^t as exp(t log beta): pow's special cases cost the float64 kernel spills, for nothing here
      const double t = a.t0[tid] + static_cast<double>(s) + 1;
      const double bc2 = 1 - exp(t * a.log_beta2);
      constants[3 * tid] = static_cast<T>(-a.lr / (1 - exp(t * a.log_beta1)));
      constants[3 * tid + 1] = static_cast<T>(1 / sqrt(bc2));
      constants[3 * tid + 2] = static_cast<T>(a.eps_before_correction ? a.eps / sqrt(bc2) : a.eps);
    }
    // forward: a warp per output row; the squares of the weights on the way, for the penalty
    T squares = 0;
    for (int k = 0; k < depth; ++k) {
      const int64_t in = a.sizes[k], out = a.sizes[k + 1];
      const T* input = k == 0 ? x : smem + a.layout.act[k];
      T* output = smem + a.layout.act[k + 1];
      const T* w = a.p[k * per_layer];
      const T* b = a.has_bias ? a.p[k * per_layer + 1] : nullptr;
      for (int64_t j = warp; j < out; j += kWarps) {
        const T* wr = w + j * in;
        T acc = 0, sq = 0;
        for (int64_t i = lane; i < in; i += 32) {
          const T wv = wr[i];
          acc += wv * input[i];
          sq += wv * wv;
        }
        acc = warp_sum(acc);
        squares += warp_sum(sq);
        if (lane == 0) {
          if (b) acc += b[j];
          output[j] = k + 1 < depth ? act_forward(a.acts[k], acc) : acc;
        }
      }
      __syncthreads();
    }
    if (lane == 0) partial[warp] = squares;
    __syncthreads();
    // the loss and dz = softmax(z) * sum(y) - y (the mean over one row), by warp 0
    if (warp == 0) {
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t c = lane; c < classes; c += 32) m = nan_max(m, z[c]);
      m = warp_max(m);
      T e = 0;
      for (int64_t c = lane; c < classes; c += 32) e += dev_exp(z[c] - m);
      // the sum outside the select: every lane reaches the shuffles whatever m is
      const T sum = warp_sum(e);
      const T lse = dev_isinf(m) ? (m > 0 ? T(NAN) : m) : m + dev_log(sum);
      T loss;
      if (a.index) {
        const int64_t t = a.index[row];
        const bool valid = t >= 0 && t < classes;  // checked on the host; never an out-of-bounds read
        loss = valid ? lse - z[t] : std::numeric_limits<T>::quiet_NaN();
        for (int64_t c = lane; c < classes; c += 32) dz_buffer[c] = dev_exp(z[c] - lse) - (c == t ? T(1) : T(0));
      } else {
        const T* y = a.probs + row * classes;
        T total = 0, l = 0;
        for (int64_t c = lane; c < classes; c += 32) {
          total += y[c];
          l += y[c] * (lse - z[c]);
        }
        total = warp_sum(total);
        loss = warp_sum(l);
        for (int64_t c = lane; c < classes; c += 32) dz_buffer[c] = dev_exp(z[c] - lse) * total - y[c];
      }
      if (lane == 0) {
        T sum = 0;
        for (int w = 0; w < kWarps; ++w) sum += partial[w];
        a.losses[s] = a.alpha != T(0) ? loss + T(0.5) * a.alpha * sum : loss;
      }
    }
    __syncthreads();
    // backward, from the top
    T* dz = dz_buffer;
    T* below = below_buffer;
    for (int k = depth - 1; k >= 0; --k) {
      const int64_t in = a.sizes[k], out = a.sizes[k + 1];
      const T* input = k == 0 ? x : smem + a.layout.act[k];
      const int q = k * per_layer;
      T* w = a.p[q];
      if (k > 0) {
        for (int64_t i = tid; i < in; i += kThreads) {
          T acc = 0;
          for (int64_t j = 0; j < out; ++j) acc += w[j * in + i] * dz[j];
          below[i] = act_backward(a.acts[k - 1], input[i], acc);
        }
      }
      __syncthreads();  // the products above read the weights before they move
      const T* k_w = constants + 3 * q;
      for (int64_t e = tid; e < out * in; e += kThreads) {
        const int64_t j = e / in, i = e - j * in;
        T grad = dz[j] * input[i];
        if (a.alpha != T(0)) grad += a.alpha * w[e];
        update(a, k_w, q, e, grad, s);
      }
      if (a.has_bias)
        for (int64_t j = tid; j < out; j += kThreads) update(a, constants + 3 * (q + 1), q + 1, j, dz[j], s);
      __syncthreads();  // every update read dz; the next layer's gradient overwrites it
      T* t = dz;
      dz = below;
      below = t;
    }
  }
}

bool all_contiguous(at::TensorList list) {
  for (const at::Tensor& t : list)
    if (!t.is_contiguous()) return false;
  return true;
}

// The call's steps in launches of at most kRowFitStepsPerLaunch steps, each starting where the last ended:
// its rows and losses offset, Adam's step counts advanced by the steps before it, and SGD's buffers no longer
// fresh after the first. The same bits as one launch (t0 + first + s is t0 + (first + s), exactly).
template <typename T, typename Update>
void launch_row_fit(const RowFitArgs<T>& a, const Update& update) {
  for (int64_t first = 0; first < a.steps; first += kRowFitStepsPerLaunch) {
    RowFitArgs<T> part = a;
    part.rows = a.rows + first;
    part.losses = a.losses + first;
    part.steps = std::min<int64_t>(kRowFitStepsPerLaunch, a.steps - first);
    for (int q = 0; q < kMaxParams; ++q) {
      part.t0[q] = a.t0[q] + static_cast<double>(first);
      part.fresh[q] = a.fresh[q] && first == 0;
    }
    launch("row_fit_kernel", row_fit_kernel<T, Update>, dim3(1), dim3(kThreads),
           static_cast<size_t>(a.layout.words) * sizeof(T), part, update);
  }
}

// The arguments shared by both optimizers; the caller fills in the state.
template <typename T>
RowFitArgs<T> common_args(const RowFitProblem& problem) {
  RowFitArgs<T> a{};
  a.x = problem.input.const_data_ptr<T>();
  a.index = problem.is_index ? problem.target.const_data_ptr<int64_t>() : nullptr;
  a.probs = problem.is_index ? nullptr : problem.target.const_data_ptr<T>();
  a.rows = problem.rows.const_data_ptr<int64_t>();
  a.losses = problem.losses.data_ptr<T>();
  a.steps = problem.rows.numel();
  a.depth = static_cast<int>(problem.sizes.size()) - 1;
  a.has_bias = problem.has_bias;
  a.alpha = static_cast<T>(problem.alpha);
  for (size_t k = 0; k < problem.sizes.size(); ++k) a.sizes[k] = problem.sizes[k];
  a.layout = lay_out(problem.sizes);
  for (size_t k = 0; k < problem.activations.size(); ++k) a.acts[k] = parse_activation(problem.activations[k]);
  for (size_t i = 0; i < problem.params.size(); ++i) a.p[i] = problem.params[i].data_ptr<T>();
  return a;
}

// Records the in-place updates in the version counters, as the per-step route's updates do.
void bump(at::TensorList list) {
  for (const at::Tensor& t : list)
    if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

bool row_fit_applies(const RowFitProblem& problem, at::TensorList state) {
  const at::ScalarType dtype = problem.input.scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble) return false;
  const int64_t depth = static_cast<int64_t>(problem.sizes.size()) - 1;
  if (depth < 1 || depth > kMaxLayers || problem.params.size() > static_cast<size_t>(kMaxParams)) return false;
  if (!problem.input.is_contiguous() || !problem.target.is_contiguous() || !all_contiguous(problem.params) ||
      !all_contiguous(state))
    return false;
  int64_t total = 0;
  for (const at::Tensor& p : problem.params) total += p.numel();
  // within the 48 KB any device gives a block without opting in, and small enough that one SM's step beats the
  // per-step route's launches
  return lay_out(problem.sizes).words * static_cast<int64_t>(problem.input.element_size()) <= 48 * 1024 &&
         total <= kRowFitMaxParams;
}

void adam_row_fit(const RowFitProblem& problem, const RowFitAdam& adam) {
  const AdamConfig& c = adam.config;
  std::vector<double> counts;
  for (const at::Tensor& s : adam.steps) counts.push_back(read_step(s));
  AT_DISPATCH_FLOATING_TYPES(problem.input.scalar_type(), "fastffnn.adam_row_fit", [&] {
    RowFitArgs<scalar_t> a = common_args<scalar_t>(problem);
    for (size_t i = 0; i < problem.params.size(); ++i) {
      a.s1[i] = adam.exp_avgs[i].data_ptr<scalar_t>();
      a.s2[i] = adam.exp_avg_sqs[i].data_ptr<scalar_t>();
      a.s3[i] = c.amsgrad ? adam.max_exp_avg_sqs[i].data_ptr<scalar_t>() : nullptr;
      a.t0[i] = counts[i];
    }
    a.lr = c.lr;
    a.log_beta1 = std::log(c.beta1);
    a.log_beta2 = std::log(c.beta2);
    a.eps = c.eps;
    a.eps_before_correction = adam.eps_before_correction;
    const AdamConstants<scalar_t> constants{static_cast<scalar_t>(1 - c.beta1), static_cast<scalar_t>(c.beta2),
                                            static_cast<scalar_t>(1 - c.beta2), static_cast<scalar_t>(c.eps),
                                            static_cast<scalar_t>(c.weight_decay),
                                            static_cast<scalar_t>(1 - c.lr * c.weight_decay), c.weight_decay != 0,
                                            c.decoupled_weight_decay, c.maximize};
    launch_row_fit(a, AdamStep<scalar_t>{constants});
  });
  const double steps = static_cast<double>(problem.rows.numel());
  for (size_t i = 0; i < adam.steps.size(); ++i) write_step(adam.steps[i], counts[i] + steps);
  bump(adam.steps);
  bump(problem.params);
  bump(adam.exp_avgs);
  bump(adam.exp_avg_sqs);
  bump(adam.max_exp_avg_sqs);
}

void sgd_row_fit(const RowFitProblem& problem, const RowFitSgd& sgd) {
  const SgdConfig& c = sgd.config;
  const bool with_momentum = c.momentum != 0;
  AT_DISPATCH_FLOATING_TYPES(problem.input.scalar_type(), "fastffnn.sgd_row_fit", [&] {
    RowFitArgs<scalar_t> a = common_args<scalar_t>(problem);
    for (size_t i = 0; i < problem.params.size(); ++i) {
      a.s1[i] = with_momentum ? sgd.momentum_buffers[i].data_ptr<scalar_t>() : nullptr;
      a.fresh[i] = with_momentum && sgd.fresh.get(i);
    }
    const SgdConstants<scalar_t> constants{static_cast<scalar_t>(-c.lr), static_cast<scalar_t>(c.weight_decay),
                                           static_cast<scalar_t>(c.momentum), static_cast<scalar_t>(1 - c.dampening),
                                           c.weight_decay != 0, c.nesterov, c.maximize};
    launch_row_fit(a, SgdStep<scalar_t>{constants});
  });
  bump(problem.params);
  bump(sgd.momentum_buffers);
}

}  // namespace fastffnn::cuda
