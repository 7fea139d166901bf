// Which backend's kernels run on a tensor. layers.cpp, checks.cpp and the
// fused tier ask this instead of t.is_cuda(), so that the emulated build
// (FASTFFNN_BACKEND=emulated, csrc/cuda/emulation/) can send CPU tensors down
// the CUDA route, where the CUDA kernels run on the CPU under the emulator.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastffnn {

inline bool runs_cuda_kernels(const at::Tensor& t) {
#if defined(FASTFFNN_CUDA_EMULATION)
  return t.is_cpu() || t.is_cuda();
#elif defined(FASTFFNN_WITH_CUDA)
  return t.is_cuda();
#else
  (void)t;
  return false;
#endif
}

}  // namespace fastffnn
