// The per-example epoch on CUDA in one launch per 1,024 steps (row_fit.cu), which the fit
// ops of train_cuda.cpp take at batch 1 where it applies.
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "../checks.h"

namespace fastffnn::cuda {

// The most parameters the one-block epoch takes: a step moves about 28 bytes
// a parameter through one SM, some 7 MB here, where the per-step route's
// launches cost tens of microseconds a step whatever the size. (A prior, not
// yet measured on a GPU.)
constexpr int64_t kRowFitMaxParams = int64_t{1} << 18;

// The most steps one launch of the one-block epoch runs: a launch of seconds (a long epoch of a network near
// kRowFitMaxParams) would meet the watchdog of a GPU that also drives a display, while one launch more per
// 1,024 steps of a microsecond or more each costs next to nothing.
constexpr int64_t kRowFitStepsPerLaunch = 1024;

// One fit call's steps at batch 1: the checked input (n, n_0), target (n,)
// class indices or (n, n_L) probabilities, the order's rows already on the
// device (one a step), the network's params (weights[0], biases[0], ...),
// sizes n_0 ... n_L, the hidden activations, scikit-learn's penalty alpha,
// and the (steps,) losses to write.
struct RowFitProblem {
  const at::Tensor& input;
  const at::Tensor& target;
  bool is_index;
  const at::Tensor& rows;
  at::TensorList params;
  bool has_bias;
  c10::ArrayRef<std::string> activations;
  const std::vector<int64_t>& sizes;
  double alpha;
  at::Tensor& losses;
};

struct RowFitAdam {
  at::TensorList exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
  AdamConfig config;
  bool eps_before_correction;  // scikit-learn's eps
};

struct RowFitSgd {
  at::TensorList momentum_buffers;
  const c10::List<bool>& fresh;
  SgdConfig config;
};

// Whether the one-block epoch runs this problem, whose optimizer state is
// `state`: float32 or float64, 1 to 16 layers, every tensor contiguous, the
// activations and vectors within 48 KB of shared memory, and at most
// kRowFitMaxParams parameters.
bool row_fit_applies(const RowFitProblem& problem, at::TensorList state);

// Runs every step, kRowFitStepsPerLaunch steps a launch, and advances Adam's
// CPU step counters by their number. The arguments must have passed the fit op's checks, and the
// op must have refused a capture (refuse_capture).
void adam_row_fit(const RowFitProblem& problem, const RowFitAdam& adam);
void sgd_row_fit(const RowFitProblem& problem, const RowFitSgd& sgd);

}  // namespace fastffnn::cuda
