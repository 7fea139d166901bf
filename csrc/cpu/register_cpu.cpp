// Registers every op's kernel (csrc/ops.h) with the CPU backend
// (backend.h) for the CPU dispatch key.
#include <torch/library.h>

#include "../ops.h"
#include "backend.h"

// The emulated build (csrc/cuda/emulation/) registers the CUDA backend for
// CPU tensors instead, so that its kernels run on the CPU.
#ifndef FASTFFNN_CUDA_EMULATION
TORCH_LIBRARY_IMPL(fastffnn, CPU, m) { fastffnn::ops::register_kernels<fastffnn::cpu::Backend>(m); }
#endif
