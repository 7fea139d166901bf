// The CUDA emulator (FASTFFNN_BACKEND=emulated): what fastffnn's kernel
// sources see when they are compiled as host C++ instead of by nvcc, so that
// every CUDA kernel runs, unchanged, on a machine without a GPU.
//
// * Each CUDA thread is a fiber; a block's fibers run cooperatively, each until
//   it reaches a barrier, a warp collective or its end, in an order set by the
//   schedule (ascending, descending or seeded random thread and block orders).
//   A missing barrier makes the results depend on that order, which the tests
//   catch by running every case under several schedules and demanding the
//   same bits.
// * __syncthreads is a block barrier, __shfl_xor_sync and mma.sync are warp
//   collectives: each waits for every lane its mask names. A deadlock, a
//   collective some lane of its mask exited before (or never reaches), lanes
//   meeting at different collectives, a barrier reached after a thread of the
//   block exited, or a shuffle reading a lane outside its mask raises an error
//   naming the kernel, the block, the threads and the source line.
// * Shared memory (dynamic and static) is fresh for each block and filled with
//   0xFF bytes (NaN as float or double), so a value read before it is written
//   shows up.
// * The inline PTX is replaced by functions written from the PTX ISA's text:
//   cvt.rna.tf32.f32, and mma.sync m16n8k8 .tf32 and m16n8k16 .bf16/.f16 with
//   the ISA's fragment layouts (emulator.cpp). Products are exact and summed in
//   double, then rounded once: the real tensor cores' accumulation order and
//   rounding are unspecified by the ISA and not reproduced.
//
// The host side (device attributes, cudaFuncSetAttribute, the current stream,
// graph-capture status) comes from the shim headers beside this one
// (cuda_runtime.h, c10/cuda/*.h), with device properties set from Python
// through torch.ops.fastffnn._emu_configure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#ifndef FASTFFNN_CUDA_EMULATION
#error "fastffnn_emulation.h is for the emulated build (FASTFFNN_CUDA_EMULATION) only"
#endif

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace fastffnn::emu {

// What the built-in variables of the running CUDA thread read.
struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

const ThreadState& this_thread();

void syncthreads(const char* file, int line);
uint64_t shfl_xor_bits(unsigned mask, uint64_t bits, int lane_mask, const char* file, int line);
[[noreturn]] void trap(const char* file, int line);

// The block's dynamic shared memory, and a static __shared__ array (one per
// source site and block, found by `key`), both poisoned.
void* dynamic_shared();
void* static_shared(const void* key, size_t bytes, size_t align);

// PTX: cvt.rna.tf32.f32 and the three mma.sync shapes fastffnn uses.
uint32_t cvt_rna_tf32(float x);
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line);
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line);
void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const char* file, int line);

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = shfl_xor_bits(mask, bits, lane_mask, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

template <typename T>
T& static_shared_array(const void* key) {
  return *static_cast<T*>(static_shared(key, sizeof(T), alignof(T)));
}

// Runs body(ctx) as every thread of a grid, block after block. Launch errors
// (a bad configuration, more dynamic shared memory than the kernel's limit)
// become the error cudaGetLastError returns, as on a GPU; errors while the
// kernel runs (deadlock, divergence, traps) raise at once with their report.
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem,
              void (*body)(void*), void* ctx);

// Whether the step counters count as device memory (the emulator's setting "device_steps"): the emulated
// build's tensors are all CPU tensors, so it cannot tell capturable (device) counters from the CPU ones by
// where they are, as the real build does; the kernels then read and advance them, as on a GPU.
bool device_steps();

template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_smem,
            Args&&... args) {
  // The arguments are converted to the parameter types once, as a launch
  // does; every thread then gets its own copy.
  struct Packed {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> args;
  };
  Packed packed{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)};
  run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, dynamic_smem,
           [](void* ctx) {
             auto* p = static_cast<Packed*>(ctx);
             std::apply(p->kernel, p->args);
           },
           &packed);
}

}  // namespace fastffnn::emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

#define threadIdx (::fastffnn::emu::this_thread().thread_idx)
#define blockIdx (::fastffnn::emu::this_thread().block_idx)
#define blockDim (::fastffnn::emu::this_thread().block_dim)
#define gridDim (::fastffnn::emu::this_thread().grid_dim)

#define __syncthreads() ::fastffnn::emu::syncthreads(__FILE__, __LINE__)
#define __shfl_xor_sync(mask, value, lane_mask) \
  ::fastffnn::emu::shfl_xor((mask), (value), (lane_mask), __FILE__, __LINE__)
#define __trap() ::fastffnn::emu::trap(__FILE__, __LINE__)
