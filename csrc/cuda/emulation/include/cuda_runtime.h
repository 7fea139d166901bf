// The emulated build's cuda_runtime.h: the few runtime-API types and calls
// fastffnn's CUDA sources use, answered by the emulator (emulator.cpp) with the
// device properties set through torch.ops.fastffnn._emu_configure.
#pragma once

#include "fastffnn_emulation.h"

typedef struct CUstream_st* cudaStream_t;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef cudaError_t cudaError;

enum cudaDeviceAttr : int {
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

enum cudaFuncAttribute : int {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

// The fields of the runtime's struct that the emulator answers (the others stay zero).
struct cudaFuncAttributes {
  size_t sharedSizeBytes;
  size_t constSizeBytes;
  size_t localSizeBytes;
  int maxThreadsPerBlock;
  int numRegs;
  int ptxVersion;
  int binaryVersion;
  int cacheModeCA;
  int maxDynamicSharedSizeBytes;
  int preferredShmemCarveout;
};

namespace fastffnn::emu {
cudaError_t get_device(int* device);
cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int device);
cudaError_t set_func_attribute(const void* kernel, cudaFuncAttribute attr, int value);
cudaError_t func_attributes(cudaFuncAttributes* attr, const void* kernel);
cudaError_t take_last_error();
const char* error_string(cudaError_t error);
}  // namespace fastffnn::emu

inline cudaError_t cudaGetDevice(int* device) { return fastffnn::emu::get_device(device); }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  return fastffnn::emu::device_attribute(value, attr, device);
}
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return fastffnn::emu::set_func_attribute(reinterpret_cast<const void*>(entry), attr, value);
}
template <typename T>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, T* entry) {
  return fastffnn::emu::func_attributes(attr, reinterpret_cast<const void*>(entry));
}
inline cudaError_t cudaGetLastError() { return fastffnn::emu::take_last_error(); }
inline const char* cudaGetErrorString(cudaError_t error) { return fastffnn::emu::error_string(error); }
