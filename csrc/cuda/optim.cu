// fastffnn::adam_step_ and fastffnn::sgd_step_ on CUDA: torch.optim.Adam's
// and torch.optim.SGD's updates (their single-tensor forms, as the CPU
// kernels of csrc/cpu/optim.h compute them) for every parameter in one launch
// per group of up to kMaxTensors tensors of one dtype: a grid whose y
// dimension picks the tensor and whose x dimension strides over its elements.
// Elementwise, so every element is read and written once: memory-bound, and
// the math is done in acc_t (float for float16/bfloat16/float32).
//
// Adam's step counters are CPU tensors, read and advanced on the host (no
// device sync), and the bias corrections go to the kernel as arguments. A CUDA
// graph would replay them frozen, so a capture is refused, as torch.optim.Adam
// refuses one unless capturable=True. With capturable=True they live on the
// device: one launch more advances them, the update's kernel forms the bias
// corrections from them, and a capture may hold the update.
#include <ATen/Dispatch.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "common.cuh"
#include "updates.cuh"
#include "updates.h"

namespace fastffnn::cuda {
namespace {

constexpr int kMaxTensors = 24;   // tensors per launch: the table stays well under the 4 KB of kernel arguments
constexpr int kThreads = 256;
constexpr int kPerThread = 4;     // elements per thread and grid stride
constexpr int kMaxBlocksX = 1024;  // a larger tensor strides

// The tensors of one launch: parameter i has n[i] elements at p[i], with its
// gradient g[i] and state; the per-tensor constants come along.
template <typename T, typename Acc>
struct AdamTable {
  T* p[kMaxTensors];
  const T* g[kMaxTensors];
  T* m[kMaxTensors];
  T* v[kMaxTensors];
  T* vmax[kMaxTensors];  // null without amsgrad
  int64_t n[kMaxTensors];
  Acc neg_step_size[kMaxTensors], inv_bc2_sqrt[kMaxTensors];  // from a CPU step counter
  const void* step[kMaxTensors];  // a device step counter (capturable), or null
  bool step_is_double[kMaxTensors];
};

// Device step counters (capturable): slot i's is a float32, or float64 where is_double[i] (torch keeps them in
// the default dtype's precision).
struct StepList {
  void* s[kMaxTensors];
  bool is_double[kMaxTensors];
  int count;
};

__global__ void advance_steps_kernel(StepList list) {
  const int i = threadIdx.x;
  if (i >= list.count) return;
  if (list.is_double[i])
    *static_cast<double*>(list.s[i]) += 1;
  else
    *static_cast<float*>(list.s[i]) += 1;
}

// What the kernel needs to form the bias corrections from a device step counter, in double as the host does
// for a CPU one, so that both give the same constants.
struct BiasCorrection {
  double lr, beta1, beta2;
};

template <typename T, typename Acc>
__global__ void adam_kernel(AdamTable<T, Acc> table, AdamConstants<Acc> c, BiasCorrection bc) {
  const int t = blockIdx.y;
  const int64_t n = table.n[t];
  Acc nss = table.neg_step_size[t], ibc = table.inv_bc2_sqrt[t];
  if (const void* step = table.step[t]) {  // the same for the whole block (blockIdx.y): the barrier is safe
    // one thread's two double pows (slow where double is: consumer GPUs), shared with the block
    FASTFFNN_STATIC_SHARED(Acc, corrections, [2]);
    if (threadIdx.x == 0) {
      const double count = table.step_is_double[t] ? *static_cast<const double*>(step)
                                                   : static_cast<double>(*static_cast<const float*>(step));
      corrections[0] = static_cast<Acc>(-bc.lr / (1 - dev_pow(bc.beta1, count)));
      corrections[1] = static_cast<Acc>(1 / dev_sqrt(1 - dev_pow(bc.beta2, count)));
    }
    __syncthreads();
    nss = corrections[0];
    ibc = corrections[1];
  }
  T *p = table.p[t], *m = table.m[t], *v = table.v[t], *vmax = table.vmax[t];
  const T* g = table.g[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    adam_element(static_cast<Acc>(g[i]), p + i, m + i, v + i, vmax ? vmax + i : nullptr, nss, ibc, c.eps, c);
}

template <typename T, typename Acc>
struct SgdTable {
  T* p[kMaxTensors];
  const T* g[kMaxTensors];
  T* buf[kMaxTensors];  // null without momentum
  bool fresh[kMaxTensors];
  int64_t n[kMaxTensors];
};

template <typename T, typename Acc>
__global__ void sgd_kernel(SgdTable<T, Acc> table, SgdConstants<Acc> c) {
  const int t = blockIdx.y;
  const int64_t n = table.n[t];
  T *p = table.p[t], *buf = table.buf[t];
  const T* g = table.g[t];
  const bool fresh = table.fresh[t];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    sgd_element(static_cast<Acc>(g[i]), p + i, buf ? buf + i : nullptr, fresh, c);
}

// Launches `kernel` over the `count` tensors of `table`, the largest of `largest` elements.
template <typename Table, typename Constants, typename... Extra>
void launch_table(const char* name, void (*kernel)(Table, Constants, Extra...), const Table& table,
                  const Constants& c, int count, int64_t largest, const Extra&... extra) {
  if (count == 0 || largest == 0) return;
  const int64_t blocks_x = std::min<int64_t>(ceil_div(largest, int64_t(kThreads) * kPerThread), kMaxBlocksX);
  launch(name, kernel, dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(count)), dim3(kThreads), 0,
         table, c, extra...);
}

// The next table's parameters: from `first` on, those of params[first]'s
// dtype, up to kMaxTensors non-empty ones; fill(i, slot) puts parameter i in
// the table's slot. Advances `first`; returns (count, largest numel).
template <typename Fill>
std::pair<int, int64_t> next_table(const std::vector<at::Tensor>& params, size_t& first, const Fill& fill) {
  const at::ScalarType dtype = params[first].scalar_type();
  int count = 0;
  int64_t largest = 0;
  for (; first < params.size() && count < kMaxTensors && params[first].scalar_type() == dtype; ++first) {
    if (params[first].numel() == 0) continue;
    fill(first, count);
    largest = std::max<int64_t>(largest, params[first].numel());
    ++count;
  }
  return {count, largest};
}

std::vector<at::Tensor> contiguous(at::TensorList list) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& t : list) out.push_back(t.contiguous());
  return out;
}

// Copies the updated contiguous versions back into strided tensors, below
// autograd (the copies are the update itself), and records the in-place
// update in every tensor's version counter, as torch.optim's in-place ops do.
void finish(const std::vector<std::pair<at::TensorList, const std::vector<at::Tensor>*>>& written,
            at::TensorList steps) {
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (const auto& [to, from] : written)
      for (size_t i = 0; i < to.size(); ++i)
        if (!to[i].is_same((*from)[i])) to[i].copy_((*from)[i]);
  }
  for (const auto& written_list : written)
    for (const at::Tensor& t : written_list.first)
      if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
  for (const at::Tensor& t : steps)
    if (!t.is_inference()) t.unsafeGetTensorImpl()->bump_version();
}

c10::OptionalDeviceGuard guard_for(const at::Tensor& t) {
  return t.is_cpu() ? c10::OptionalDeviceGuard() : c10::OptionalDeviceGuard(t.device());
}

// Advances every device step counter, kMaxTensors a launch, before any update reads them (as torch advances
// every counter first).
void advance_device_steps(at::TensorList steps) {
  for (size_t first = 0; first < steps.size(); first += kMaxTensors) {
    StepList list{};
    list.count = static_cast<int>(std::min<size_t>(kMaxTensors, steps.size() - first));
    for (int i = 0; i < list.count; ++i) {
      const at::Tensor& s = steps[first + i];
      TORCH_CHECK_VALUE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble,
                        "fastffnn.adam_step_: a device step counter must be float32 or float64, got steps[",
                        first + i, "] of ", s.scalar_type());
      list.s[i] = s.data_ptr();
      list.is_double[i] = s.scalar_type() == at::kDouble;
    }
    launch("advance_steps_kernel", advance_steps_kernel, dim3(1), dim3(32), 0, list);
  }
}

}  // namespace

bool steps_on_device(at::TensorList steps) {
#ifdef FASTFFNN_CUDA_EMULATION
  return !steps.empty() && emu::device_steps();
#else
  return !steps.empty() && !steps[0].is_cpu();
#endif
}

void refuse_capture(const char* op, const char* why) {
  TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None, "fastffnn.", op,
              ": cannot be captured in a CUDA graph: ", why);
}

void refuse_fresh_capture(const char* op, const c10::List<bool>& fresh) {
  for (const bool f : fresh) {
    if (f) {
      refuse_capture(op, "this is the first step of its momentum buffers, which sets them to the gradients, and "
                         "a replay would set them again: capture the steps after it");
      return;
    }
  }
}

void adam_update(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                 const AdamConfig& config) {
  if (params.empty()) return;
  const auto guard = guard_for(params[0]);
  // (eps_before_correction, scikit-learn's placement of eps, is the CPU fit ops' alone)
  const double lr = config.lr, beta1 = config.beta1, beta2 = config.beta2, eps = config.eps,
               weight_decay = config.weight_decay;
  const bool amsgrad = config.amsgrad, maximize = config.maximize;
  const bool decoupled_weight_decay = config.decoupled_weight_decay;
  const bool on_device = steps_on_device(steps);
  std::vector<double> counts;
  if (on_device)
    advance_device_steps(steps);
  else
    for (const at::Tensor& s : steps) counts.push_back(advance_step(s));  // every counter first, as torch does
  // The kernel reads each array as one contiguous vector: strided tensors go through copies.
  const auto p = contiguous(params), g = contiguous(grads), m = contiguous(exp_avgs), v = contiguous(exp_avg_sqs),
             vmax = contiguous(max_exp_avg_sqs);
  for (size_t first = 0; first < p.size();) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p[first].scalar_type(), "fastffnn.adam_step_", [&] {
      using Acc = acc_t<scalar_t>;
      AdamTable<scalar_t, Acc> table{};
      const auto [count, largest] = next_table(p, first, [&](size_t i, int slot) {
        table.p[slot] = p[i].data_ptr<scalar_t>();
        table.g[slot] = g[i].const_data_ptr<scalar_t>();
        table.m[slot] = m[i].data_ptr<scalar_t>();
        table.v[slot] = v[i].data_ptr<scalar_t>();
        table.vmax[slot] = amsgrad ? vmax[i].data_ptr<scalar_t>() : nullptr;
        table.n[slot] = p[i].numel();
        if (on_device) {
          table.step[slot] = steps[i].const_data_ptr();
          table.step_is_double[slot] = steps[i].scalar_type() == at::kDouble;
        } else {
          table.neg_step_size[slot] = static_cast<Acc>(-lr / (1 - std::pow(beta1, counts[i])));
          table.inv_bc2_sqrt[slot] = static_cast<Acc>(1 / std::sqrt(1 - std::pow(beta2, counts[i])));
        }
      });
      const AdamConstants<Acc> c{static_cast<Acc>(1 - beta1), static_cast<Acc>(beta2), static_cast<Acc>(1 - beta2),
                                 static_cast<Acc>(eps), static_cast<Acc>(weight_decay),
                                 static_cast<Acc>(1 - lr * weight_decay), weight_decay != 0, decoupled_weight_decay,
                                 maximize};
      launch_table("adam_kernel", adam_kernel<scalar_t, Acc>, table, c, count, largest, BiasCorrection{lr, beta1, beta2});
    });
  }
  finish({{params, &p}, {exp_avgs, &m}, {exp_avg_sqs, &v}, {max_exp_avg_sqs, &vmax}}, steps);
}

void sgd_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                const c10::List<bool>& fresh, const SgdConfig& config) {
  if (params.empty()) return;
  const auto guard = guard_for(params[0]);
  const double lr = config.lr, momentum = config.momentum, dampening = config.dampening,
               weight_decay = config.weight_decay;
  const bool nesterov = config.nesterov, maximize = config.maximize;
  const bool with_momentum = momentum != 0;
  const auto p = contiguous(params), g = contiguous(grads), buf = contiguous(momentum_buffers);
  for (size_t first = 0; first < p.size();) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p[first].scalar_type(), "fastffnn.sgd_step_", [&] {
      using Acc = acc_t<scalar_t>;
      SgdTable<scalar_t, Acc> table{};
      const auto [count, largest] = next_table(p, first, [&](size_t i, int slot) {
        table.p[slot] = p[i].data_ptr<scalar_t>();
        table.g[slot] = g[i].const_data_ptr<scalar_t>();
        table.buf[slot] = with_momentum ? buf[i].data_ptr<scalar_t>() : nullptr;
        table.fresh[slot] = with_momentum && fresh.get(i);
        table.n[slot] = p[i].numel();
      });
      const SgdConstants<Acc> c{static_cast<Acc>(-lr), static_cast<Acc>(weight_decay), static_cast<Acc>(momentum),
                                static_cast<Acc>(1 - dampening), weight_decay != 0, nesterov, maximize};
      launch_table("sgd_kernel", sgd_kernel<scalar_t, Acc>, table, c, count, largest);
    });
  }
  finish({{params, &p}, {momentum_buffers, &buf}}, {});
}

namespace {

// The capture asked about is that of the parameters' device: the guard comes first.
template <typename Refuse>
void refuse_capture_on(at::TensorList params, const Refuse& refuse) {
  if (params.empty()) return;
  const auto guard = guard_for(params[0]);
  refuse();
}

void adam_step_(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                at::TensorList max_exp_avg_sqs, at::TensorList steps, double lr, double beta1, double beta2,
                double eps, double weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay) {
  constexpr const char* op = "adam_step_";
  TORCH_CHECK_VALUE(grads.size() == params.size(), "fastffnn.", op, ": got ", params.size(), " params but ",
                    grads.size(), " grads");
  const AdamConfig config{lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay};
  check_adam_args(op, true, kDevice, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, config);
  if (!steps_on_device(steps)) refuse_capture_on(params, [&] { refuse_capture(op, kHostStepCounters); });
  adam_update(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, config);
}

void sgd_step_(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
               const c10::List<bool>& fresh, double lr, double momentum, double dampening, double weight_decay,
               bool nesterov, bool maximize) {
  constexpr const char* op = "sgd_step_";
  TORCH_CHECK_VALUE(grads.size() == params.size(), "fastffnn.", op, ": got ", params.size(), " params but ",
                    grads.size(), " grads");
  const SgdConfig config{lr, momentum, dampening, weight_decay, nesterov, maximize};
  check_sgd_args(op, true, kDevice, params, grads, momentum_buffers, fresh.size(), config);
  refuse_capture_on(params, [&] { refuse_fresh_capture(op, fresh); });
  sgd_update(params, grads, momentum_buffers, fresh, config);
}

}  // namespace
}  // namespace fastffnn::cuda

// The emulated build has no CUDA tensors: it registers these kernels for CPU
// tensors (csrc/cpu/optim.cpp then registers none).
#ifdef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) {
#else
TORCH_LIBRARY_IMPL(fastffnn, CUDA, m) {
#endif
  m.impl("adam_step_", &fastffnn::cuda::adam_step_);
  m.impl("adam_step_.tensor_lr", &fastffnn::adam_step_tensor_lr<&fastffnn::cuda::adam_step_>);
  m.impl("sgd_step_", &fastffnn::cuda::sgd_step_);
}
