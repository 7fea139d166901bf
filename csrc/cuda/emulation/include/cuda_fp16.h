// The emulated build's cuda_fp16.h: the float16 pair fastffnn's kernels pack
// for mma.sync, with the device's round-to-nearest-even conversion.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>

struct __half {
  uint16_t bits;
};
struct __half2 {
  __half x, y;  // x in the low 16 bits, as on the device
};

inline __half2 __floats2half2_rn(float lo, float hi) {
  return __half2{__half{c10::Half(lo).x}, __half{c10::Half(hi).x}};
}
