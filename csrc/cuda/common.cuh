// Device-side helpers shared by fastffnn's CUDA kernels: float/double math
// overloads, deterministic warp reductions, the activations, and the launch
// plumbing (current stream, launch checks).
//
// The same sources also compile as host C++ for the CUDA emulator
// (FASTFFNN_CUDA_EMULATION, csrc/cuda/emulation/): kernels launch through
// launch() and declare shared memory with the two macros below, which are the
// only places the two builds differ, besides the inline PTX.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <utility>

#include "../activation.h"

// `type name[]`: the block's dynamic shared memory, as `type`.
// `type name dims` (dims like [8][33]): a static shared array.
#ifdef FASTFFNN_CUDA_EMULATION
#define FASTFFNN_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::fastffnn::emu::dynamic_shared())
#define FASTFFNN_STATIC_SHARED(type, name, dims) \
  typedef type name##_shared_t dims;              \
  static const char name##_shared_key = 0;        \
  name##_shared_t& name = ::fastffnn::emu::static_shared_array<name##_shared_t>(&name##_shared_key)
#else
#define FASTFFNN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define FASTFFNN_STATIC_SHARED(type, name, dims) __shared__ type name dims
#endif

namespace fastffnn::cuda {

// Everything between the matrix products is computed in this type: float for
// float16, bfloat16 and float32 inputs, double for float64.
template <typename T>
using acc_t = at::opmath_type<T>;

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dev_tanh(double x) { return tanh(x); }

template <typename T>
__device__ __forceinline__ bool dev_isnan(T x) {
  return x != x;
}

template <typename T>
__device__ __forceinline__ bool dev_isinf(T x) {
  return x == T(INFINITY) || x == T(-INFINITY);
}

// max that propagates NaN, as torch.max and the CPU kernels do.
template <typename T>
__device__ __forceinline__ T nan_max(T a, T b) {
  return (dev_isnan(a) || a > b) ? a : b;
}

// Butterfly reductions over a full warp. Every lane ends with the same value,
// and the order of the additions is fixed, so results are reproducible.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = nan_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// The activations, with each derivative written in terms of the output y.
template <Activation A>
struct Act;

template <>
struct Act<Activation::Tanh> {
  template <typename T>
  __device__ static T forward(T x) {
    return dev_tanh(x);
  }
  template <typename T>
  __device__ static T backward(T y, T dy) {
    return dy * (T(1) - y * y);
  }
};

template <>
struct Act<Activation::ReLU> {
  template <typename T>
  __device__ static T forward(T x) {
    return (dev_isnan(x) || x > T(0)) ? x : T(0);  // NaN-propagating, as torch.relu
  }
  template <typename T>
  __device__ static T backward(T y, T dy) {
    return y <= T(0) ? T(0) : dy;  // torch's threshold_backward
  }
};

template <>
struct Act<Activation::Sigmoid> {
  template <typename T>
  __device__ static T forward(T x) {
    return T(1) / (T(1) + dev_exp(-x));
  }
  template <typename T>
  __device__ static T backward(T y, T dy) {
    return dy * y * (T(1) - y);
  }
};

// The activation `a` chosen at run time (a network's layers may differ), for kernels that loop over layers.
template <typename T>
__device__ __forceinline__ T act_forward(Activation a, T x) {
  switch (a) {
    case Activation::ReLU:
      return Act<Activation::ReLU>::forward(x);
    case Activation::Sigmoid:
      return Act<Activation::Sigmoid>::forward(x);
    case Activation::Tanh:
      break;
  }
  return Act<Activation::Tanh>::forward(x);
}

template <typename T>
__device__ __forceinline__ T act_backward(Activation a, T y, T dy) {
  switch (a) {
    case Activation::ReLU:
      return Act<Activation::ReLU>::backward(y, dy);
    case Activation::Sigmoid:
      return Act<Activation::Sigmoid>::backward(y, dy);
    case Activation::Tanh:
      break;
  }
  return Act<Activation::Tanh>::backward(y, dy);
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

// What the host code asks of the current device (device_info.cu).
struct DeviceInfo {
  int major = 0;       // compute capability
  int smem_optin = 0;  // the most dynamic shared memory a block may opt in to
  int max_grid_x = 0;  // the most blocks a grid may have along x
  // The PTX target of the code this build runs on the device, major * 10 +
  // minor: the device's own arch for a build that has code for it, lower
  // where its only code is older PTX that the driver JIT-compiled at load
  // (TORCH_CUDA_ARCH_LIST="7.5+PTX" on an sm_90). The kernels hold their
  // sm_80 instructions (mma.sync, cvt.rna.tf32) only where this is >= 80.
  int code_arch = 0;
};

const DeviceInfo& current_device_info();

// kernel<<<grid, block, dynamic_smem>>>(args...) on the current stream, then
// the launch check. `name` is what the emulator's reports call the kernel.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
            Args&&... args) {
#ifdef FASTFFNN_CUDA_EMULATION
  emu::launch(name, kernel, grid, block, dynamic_smem, std::forward<Args>(args)...);
#else
  (void)name;
  kernel<<<grid, block, dynamic_smem, current_stream()>>>(std::forward<Args>(args)...);
#endif
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The last step of every column sum (bias gradients): out[c] = the sum over
// `chunks` rows of per-block partial sums (chunks, n), one thread per column,
// in a fixed order so that the result is deterministic.
template <typename T, typename Acc>
__global__ void finish_colsum_kernel(const Acc* __restrict__ partial, int64_t chunks, int64_t n, T* __restrict__ out) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= n) return;
  Acc s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += partial[k * n + col];
  out[col] = static_cast<T>(s);
}

// The most blocks a grid may have along y and z.
constexpr int64_t kMaxGridYZ = 65535;

}  // namespace fastffnn::cuda
