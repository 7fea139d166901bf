// The C++ signatures of the ops' backend kernels (csrc/ops/<op>.cpp), one per
// schema in csrc/registration.cpp. The autograd layer (csrc/autograd.cpp)
// takes each op's dispatcher signature from here with decltype, so no
// signature is typed twice, and the CPU training step (adam.cpp) calls the
// forward and backward kernels directly instead of through the dispatcher.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>
#include <vector>

namespace fastffnn {

at::Tensor linear_act(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      c10::string_view activation);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    c10::string_view activation, std::array<bool, 3> output_mask);

at::Tensor linear_softmax(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          bool log);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_softmax_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& output,
    bool log, std::array<bool, 3> output_mask);

std::tuple<at::Tensor, at::Tensor> softmax_nll(const at::Tensor& logits, const at::Tensor& target,
                                               c10::string_view reduction);
std::tuple<at::Tensor, at::Tensor> softmax_nll_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                                                        const at::Tensor& target, const at::Tensor& lse,
                                                        c10::string_view reduction, std::array<bool, 2> output_mask);

std::tuple<at::Tensor, at::Tensor> ffnn(const at::Tensor& input, const at::Tensor& V_weight,
                                        const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                        const c10::optional<at::Tensor>& W_bias, c10::string_view activation,
                                        bool log);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ffnn_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& hidden, const at::Tensor& output, c10::string_view activation, bool log,
    std::array<bool, 5> output_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> ffnn_nll(const at::Tensor& input, const at::Tensor& V_weight,
                                                        const c10::optional<at::Tensor>& V_bias,
                                                        const at::Tensor& W_weight,
                                                        const c10::optional<at::Tensor>& W_bias,
                                                        const at::Tensor& target, c10::string_view activation,
                                                        c10::string_view reduction);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ffnn_nll_backward(
    const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& hidden, const at::Tensor& log_probs, const at::Tensor& target, c10::string_view activation,
    c10::string_view reduction, std::array<bool, 6> output_mask);

}  // namespace fastffnn
