// fastffnn::softmax_nll and its backward: the cross-entropy
// -sum(y * log softmax(z)) of logits z against class indices or
// probabilities y, in one row pass that keeps each row's log-sum-exp, which is
// all the backward needs to rebuild softmax(z) = exp(z - lse).
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../checks.h"
#include "../layers.h"
#include "device_guard.h"
#include "kernels.h"

namespace fastffnn {

// Validates logits (..., classes) and returns (rows, classes).
static std::pair<int64_t, int64_t> check_logits(const char* op, const at::Tensor& logits) {
  check_floating(op, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.size(-1) >= 1, "fastffnn.", op,
                    ": logits must have shape (..., classes) with at least one class, got ",
                    logits.sizes());
  const int64_t classes = logits.size(-1);
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  return {c10::multiply_integers(lead.begin(), lead.end()), classes};
}

std::tuple<at::Tensor, at::Tensor> softmax_nll(const at::Tensor& logits, const at::Tensor& target,
                                               c10::string_view reduction) {
  const auto guard = device_guard_for(logits);
  constexpr const char* op = "softmax_nll";
  const Reduction red = parse_reduction(reduction);
  const auto [rows, classes] = check_logits(op, logits);
  const bool is_index = check_target(op, logits.sizes(), logits, target);
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);

  const auto z = logits.reshape({rows, classes}).contiguous();
  auto lse = at::empty({rows}, z.options().dtype(at::toOpMathType(z.scalar_type())));
  auto row_loss = nll_rows_2d(op, z, target_2d(target, rows, classes, is_index), is_index, &lse);
  return {reduce_loss(row_loss, red, lead, z.scalar_type()), lse.view(lead)};
}

std::tuple<at::Tensor, at::Tensor> softmax_nll_backward(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
    const at::Tensor& lse, c10::string_view reduction, std::array<bool, 2> output_mask) {
  const auto guard = device_guard_for(logits);
  constexpr const char* op = "softmax_nll_backward";
  const Reduction red = parse_reduction(reduction);
  const auto [rows, classes] = check_logits(op, logits);
  const bool is_index = check_target(op, logits.sizes(), logits, target);
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  TORCH_CHECK_VALUE(lse.device() == logits.device(), "fastffnn.", op, ": lse is on ", lse.device(),
                    " but logits are on ", logits.device());
  TORCH_CHECK_TYPE(lse.scalar_type() == at::toOpMathType(logits.scalar_type()), "fastffnn.", op,
                   ": lse must be ", at::toOpMathType(logits.scalar_type()), ", got ", lse.scalar_type());
  TORCH_CHECK_VALUE(lse.sizes() == lead, "fastffnn.", op, ": lse has shape ", lse.sizes(),
                    ", expected ", lead);
  check_grad_loss(op, grad_loss, logits, lead, red);

  const auto z = logits.reshape({rows, classes}).contiguous();
  const bool want_target = output_mask[1] && !is_index;
  at::Tensor gt = want_target ? at::empty({rows, classes}, z.options()) : no_grad_placeholder(z);
  auto dz = nll_backward_2d(grad_loss, z, lse.reshape({rows}).contiguous(),
                            target_2d(target, rows, classes, is_index), is_index, red, nullptr,
                            want_target ? &gt : nullptr);
  if (want_target) gt = gt.view(logits.sizes());
  return {output_mask[0] ? dz.view(logits.sizes()) : no_grad_placeholder(z), gt};
}

static void register_kernels(torch::Library& m) {
  m.impl("softmax_nll", &softmax_nll);
  m.impl("softmax_nll_backward", &softmax_nll_backward);
}


FASTFFNN_IMPL(register_kernels)


}  // namespace fastffnn
