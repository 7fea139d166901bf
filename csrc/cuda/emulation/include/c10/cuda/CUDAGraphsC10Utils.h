// The emulated build's graph-capture status: "capturing" is a setting of the
// emulator (torch.ops.fastffnn._emu_configure("capturing", 1)), so the code
// paths a CUDA graph takes run without a GPU too.
#pragma once

#include <cuda_runtime.h>

namespace fastffnn::emu {
bool capturing();
}  // namespace fastffnn::emu

namespace c10::cuda {

enum class CaptureStatus : int { None = 0, Active = 1, Invalidated = 2 };

inline CaptureStatus currentStreamCaptureStatusMayInitCtx() {
  return fastffnn::emu::capturing() ? CaptureStatus::Active : CaptureStatus::None;
}

}  // namespace c10::cuda
