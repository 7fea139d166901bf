// The registration of every op's kernel (csrc/ops.h) with the CUDA backend
// (backend.h says its strategy).
#include <torch/library.h>

#include "../ops.h"
#include "backend.h"

// The emulated build (csrc/cuda/emulation/) has no CUDA tensors: it registers
// this backend for CPU tensors, whose kernels then run under the emulator.
#ifdef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) { fastffnn::ops::register_kernels<fastffnn::cuda::Backend>(m); }
#else
TORCH_LIBRARY_IMPL(fastffnn, CUDA, m) { fastffnn::ops::register_kernels<fastffnn::cuda::Backend>(m); }
#endif
