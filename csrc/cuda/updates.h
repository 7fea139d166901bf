// The CUDA optimizers' updates (optim.cu), for the ops that form their own
// gradients: the training steps of train.cpp. adam_step_ and sgd_step_ are
// these after their argument checks.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include "../checks.h"

namespace fastffnn::cuda {

// The backend's device type: CUDA, or in the emulated build the CPU tensors it takes for CUDA ones.
#ifdef FASTFFNN_CUDA_EMULATION
constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;
#else
constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;
#endif

// Refuses a CUDA graph capture on the current stream of the current device (the caller holds its tensors' device
// guard), with the reason `why` below. Each op that cannot be replayed calls it once, before anything else, so
// that nothing of theirs is captured and nothing reads the device under capture; the updates below do not ask
// again. The emulated build asks the emulator's capture setting.
void refuse_capture(const char* op, const char* why);

// Adam's CPU step counters are read and advanced on the host, so a replay would reuse one step's bias
// corrections (torch.optim.Adam refuses one likewise unless capturable=True). Adam's steps with device counters
// (steps_on_device) do not refuse.
inline constexpr const char* kHostStepCounters =
    "its step counters live on the CPU and a replay would reuse this step's bias corrections "
    "(fastffnn.optim.Adam(capturable=True) keeps them on the device, as torch.optim.Adam's does)";
// An epoch checks its order and its class indices on the device and reads the result back before its first step.
inline constexpr const char* kEpochsReadTheDevice =
    "an epoch checks its inputs on the device and reads the result back before its first step";

// SGD's momentum buffers are set to the gradient at their first step (fresh) and updated after it: a graph of a
// first step would set them again at every replay. Refuses a capture where any buffer is fresh; the steps after
// the first may be captured.
void refuse_fresh_capture(const char* op, const c10::List<bool>& fresh);

// Whether Adam's step counters live on the parameters' device (fastffnn.optim.Adam(capturable=True), as
// torch.optim.Adam's): adam_update then advances them and forms the bias corrections on the device, nothing
// reads them on the host, and a CUDA graph may capture the update. check_adam_args has made them all CPU or all
// device tensors. The emulated build, whose tensors are all CPU tensors, asks the emulator's device_steps setting.
bool steps_on_device(at::TensorList steps);

// torch.optim.Adam's update of every parameter from grads[i], in one launch
// per kMaxTensors parameters of one dtype; advances the step counters (on the
// host, or for device counters in one launch more). The arguments must have
// passed check_adam_args, and the calling op must have refused a capture
// (refuse_capture) unless the counters are on the device.
void adam_update(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                 at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
                 const AdamConfig& config);

// torch.optim.SGD's, likewise (check_sgd_args); the calling op must have refused a capture of a step with a
// fresh buffer (refuse_fresh_capture).
void sgd_update(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                const c10::List<bool>& fresh, const SgdConfig& config);

}  // namespace fastffnn::cuda
