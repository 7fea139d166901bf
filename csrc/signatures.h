// The C++ signature of each op's backend kernel, one per schema in
// csrc/registration.cpp, as function types. Every backend's kernels
// (csrc/ops.h, instantiated in csrc/cpu/kernels.cpp and
// csrc/cuda/register_cuda.cpp) are checked against them at compile time, and the
// autograd layer (csrc/autograd.cpp) calls the ops through dispatcher handles
// typed by them, so no signature is typed twice.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <ATen/core/List.h>
#include <c10/util/string_view.h>

#include <array>
#include <string>
#include <vector>
#include <tuple>

namespace fastffnn::signature {

using linear_act = at::Tensor(
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    c10::string_view activation);
using linear_act_backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    c10::string_view activation, std::array<bool, 3> output_mask);
using linear_softmax = at::Tensor(
    const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias, bool log);
using linear_softmax_backward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    bool log, std::array<bool, 3> output_mask);
using softmax_nll = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& logits, const at::Tensor& target, c10::string_view reduction);
using softmax_nll_backward = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
    c10::string_view reduction, std::array<bool, 2> output_mask);
using ffnn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& input, const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
    const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias, c10::string_view activation, bool log);
using ffnn_backward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& V_weight,
    const at::Tensor& W_weight, const at::Tensor& hidden, const at::Tensor& output,
    c10::string_view activation, bool log, std::array<bool, 5> output_mask);
using ffnn_nll = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& input, const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
    const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias, const at::Tensor& target,
    c10::string_view activation, c10::string_view reduction);
using ffnn_nll_backward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& V_weight,
    const at::Tensor& W_weight, const at::Tensor& hidden, const at::Tensor& log_probs,
    const at::Tensor& target, c10::string_view activation, c10::string_view reduction,
    std::array<bool, 6> output_mask);

using mlp = std::tuple<at::Tensor, std::vector<at::Tensor>>(
    const at::Tensor& input, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
    c10::ArrayRef<std::string> activations, bool log);
using mlp_backward = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
    const at::Tensor& grad_output, const at::Tensor& input, at::TensorList weights, at::TensorList hidden,
    const at::Tensor& output, c10::ArrayRef<std::string> activations, bool log, const c10::List<bool>& output_mask);
using mlp_nll = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>(
    const at::Tensor& input, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
    const at::Tensor& target, c10::ArrayRef<std::string> activations, c10::string_view reduction);
using mlp_nll_backward = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>(
    const at::Tensor& grad_loss, const at::Tensor& input, at::TensorList weights, at::TensorList hidden,
    const at::Tensor& log_probs, const at::Tensor& target, c10::ArrayRef<std::string> activations,
    c10::string_view reduction, const c10::List<bool>& output_mask);

}  // namespace fastffnn::signature
