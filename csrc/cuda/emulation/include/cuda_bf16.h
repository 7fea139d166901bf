// The emulated build's cuda_bf16.h: the bfloat16 pair fastffnn's kernels pack
// for mma.sync, with the device's round-to-nearest-even conversion.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

struct __nv_bfloat16 {
  uint16_t bits;
};
struct __nv_bfloat162 {
  __nv_bfloat16 x, y;  // x in the low 16 bits, as on the device
};

inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
  return __nv_bfloat162{__nv_bfloat16{c10::BFloat16(lo).x}, __nv_bfloat16{c10::BFloat16(hi).x}};
}
