// The emulated build's error checks: the same macros as c10's, over the
// emulator's runtime API.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#define C10_CUDA_CHECK(EXPR)                                                        \
  do {                                                                              \
    const cudaError_t fastffnn_emu_error = (EXPR);                                  \
    TORCH_CHECK(fastffnn_emu_error == cudaSuccess, "CUDA error (emulated): ",       \
                cudaGetErrorString(fastffnn_emu_error));                            \
  } while (0)

#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
