// What every op entry point shares: a guard that makes its input's device the
// current one (CUDA kernels launch on the current device's current stream),
// and the registration of its kernels for each backend this build has.
#pragma once

#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

namespace fastffnn {

inline c10::OptionalDeviceGuard device_guard_for(const at::Tensor& t) {
  return t.is_cpu() ? c10::OptionalDeviceGuard() : c10::OptionalDeviceGuard(t.device());
}

}  // namespace fastffnn

#ifdef FASTFFNN_WITH_CUDA
#define FASTFFNN_IMPL_CUDA(register_fn) \
  TORCH_LIBRARY_IMPL(fastffnn, CUDA, m) { register_fn(m); }
#else
#define FASTFFNN_IMPL_CUDA(register_fn)
#endif

// Registers the same entry points for the CPU and, in a CUDA build, CUDA: the
// building blocks they call pick the backend by the tensors' device.
#define FASTFFNN_IMPL(register_fn)                          \
  TORCH_LIBRARY_IMPL(fastffnn, CPU, m) { register_fn(m); } \
  FASTFFNN_IMPL_CUDA(register_fn)
