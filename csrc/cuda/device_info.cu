// What the host code asks of the current device: read once per device. (The
// emulated build reads it every time: its tests change the emulated device.)
#include <mutex>

#include "common.cuh"

namespace fastffnn::cuda {

namespace {

// Never launched: its attributes say which code of this build the device
// runs (every kernel of the extension is compiled for the same targets).
__global__ void probe_kernel() {}

DeviceInfo query_device_info(int device) {
  DeviceInfo info;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&info.max_grid_x, cudaDevAttrMaxGridDimX, device));
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, probe_kernel));  // of the current device, which is `device`
  info.code_arch = attr.ptxVersion;
  return info;
}

}  // namespace

const DeviceInfo& current_device_info() {
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
#ifdef FASTFFNN_CUDA_EMULATION
  thread_local DeviceInfo fresh;
  fresh = query_device_info(device);
  return fresh;
#else
  constexpr int kMaxDevices = 64;
  static DeviceInfo cache[kMaxDevices];
  static std::once_flag once[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) {
    thread_local DeviceInfo uncached;
    uncached = query_device_info(device);
    return uncached;
  }
  std::call_once(once[device], [device] { cache[device] = query_device_info(device); });
  return cache[device];
#endif
}

}  // namespace fastffnn::cuda
