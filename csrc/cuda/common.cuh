// Device-side helpers shared by fastffnn's CUDA kernels: float/double math
// overloads, deterministic warp reductions, the activations, and the launch
// plumbing (current stream, launch checks).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../activation.h"

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

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The most blocks a grid may have along y and z.
constexpr int64_t kMaxGridYZ = 65535;

}  // namespace fastffnn::cuda
