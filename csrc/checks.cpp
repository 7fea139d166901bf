#include "checks.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/aminmax.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>

namespace fastffnn {

void check_floating(const char* op, bool reduced_precision, const char* name, const at::Tensor& t) {
  const auto dt = t.scalar_type();
  const bool reduced = dt == at::kHalf || dt == at::kBFloat16;
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || (reduced && reduced_precision), "fastffnn.", op,
                   ": ", name, " must be float32 or float64 (or float16/bfloat16 on CUDA), got ", dt,
                   " on ", t.device(), reduced ? " (convert it with .float())" : "");
}

void check_like(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastffnn.", op, ": ", name, " is on ", t.device(),
                    " but ", ref_name, " is on ", ref.device(), "; move them to one device");
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "fastffnn.", op, ": ", name, " is ",
                   t.scalar_type(), " but ", ref_name, " is ", ref.scalar_type(),
                   "; use one dtype for all of them");
}

namespace {
// The product of the leading (all but the last) sizes: the rows of a batch.
c10::SymInt leading_rows(c10::SymIntArrayRef sizes) {
  c10::SymInt rows = 1;
  for (size_t d = 0; d + 1 < sizes.size(); ++d) rows = rows * sizes[d];
  return rows;
}
}  // namespace

c10::SymInt check_layer(const char* op, const char* in_name, const at::Tensor& ref, const c10::SymInt& in,
                        const char* weight_name, const at::Tensor& weight, const char* bias_name,
                        const c10::optional<at::Tensor>& bias) {
  check_like(op, weight_name, weight, "input", ref);
  TORCH_CHECK_VALUE(weight.dim() == 2, "fastffnn.", op, ": ", weight_name,
                    " must be 2-D (out_features, in_features), got shape ", weight.sym_sizes());
  TORCH_CHECK_VALUE(weight.sym_size(1) == in, "fastffnn.", op, ": ", in_name, " has ", in,
                    " features but ", weight_name, " of shape ", weight.sym_sizes(), " expects ",
                    weight.sym_size(1));
  c10::SymInt out = weight.sym_size(0);
  if (bias.has_value()) {
    check_like(op, bias_name, *bias, "input", ref);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == out, "fastffnn.", op, ": ", bias_name,
                      " must have shape [", out, "] to match ", weight_name, " of shape ",
                      weight.sym_sizes(), ", got ", bias->sym_sizes());
  }
  return out;
}

SymLinearShape check_linear(const char* op, bool reduced_precision, const char* input_name,
                            const at::Tensor& input, const char* weight_name, const at::Tensor& weight,
                            const char* bias_name, const c10::optional<at::Tensor>& bias) {
  check_floating(op, reduced_precision, input_name, input);
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastffnn.", op, ": ", input_name,
                    " must have at least 1 dimension (..., in_features), got a 0-d tensor");
  c10::SymInt in = input.sym_size(-1);
  c10::SymInt out = check_layer(op, input_name, input, in, weight_name, weight, bias_name, bias);
  return SymLinearShape{leading_rows(input.sym_sizes()), std::move(in), std::move(out)};
}

SymNetworkShape check_network(const char* op, bool reduced_precision, const at::Tensor& input,
                              const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
                              const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias) {
  auto s = check_linear(op, reduced_precision, "input", input, "V_weight", V_weight, "V_bias", V_bias);
  c10::SymInt out = check_layer(op, "the hidden layer", input, s.out, "W_weight", W_weight, "W_bias", W_bias);
  return SymNetworkShape{std::move(s.rows), std::move(s.in), std::move(s.out), std::move(out)};
}

bool check_target(const char* op, c10::SymIntArrayRef logits_shape, const at::Tensor& logits,
                  const at::Tensor& target) {
  TORCH_CHECK_VALUE(target.device() == logits.device(), "fastffnn.", op, ": target is on ",
                    target.device(), " but the logits are on ", logits.device());
  // A uint64 index past 2^63 would read as negative; stock PyTorch refuses uint64 targets outright.
  TORCH_CHECK_TYPE(target.scalar_type() != at::kUInt64, "fastffnn.", op,
                   ": a class-index target must be a signed integer tensor (int64, as F.cross_entropy takes) or "
                   "uint8/16/32, got UInt64; convert it with .long()");
  if (at::isIntegralType(target.scalar_type(), /*includeBool=*/false)) {
    const auto lead = logits_shape.slice(0, logits_shape.size() - 1);
    TORCH_CHECK_VALUE(target.sym_sizes() == lead, "fastffnn.", op,
                      ": a class-index target must have shape ", lead, " (the logits' shape ",
                      logits_shape, " without the class dim), got ", target.sym_sizes());
    return true;
  }
  TORCH_CHECK_TYPE(target.is_floating_point(), "fastffnn.", op,
                   ": target must hold class indices (an integer tensor) or probabilities (a "
                   "floating tensor), got ",
                   target.scalar_type());
  TORCH_CHECK_TYPE(target.scalar_type() == logits.scalar_type(), "fastffnn.", op,
                   ": a probability target must have the logits' dtype ", logits.scalar_type(),
                   ", got ", target.scalar_type());
  TORCH_CHECK_VALUE(target.sym_sizes() == logits_shape, "fastffnn.", op,
                    ": a probability target must have the logits' shape ", logits_shape,
                    ", got ", target.sym_sizes());
  return false;
}

void check_grad_loss(const char* op, const at::Tensor& grad_loss, const at::Tensor& ref,
                     c10::SymIntArrayRef lead, Reduction reduction) {
  check_like(op, "grad_loss", grad_loss, "logits", ref);
  const c10::SymIntArrayRef expected = reduction == Reduction::None ? lead : c10::SymIntArrayRef{};
  TORCH_CHECK_VALUE(grad_loss.sym_sizes() == expected, "fastffnn.", op, ": grad_loss has shape ",
                    grad_loss.sym_sizes(), ", expected ", expected);
}

std::vector<int64_t> linear_output_sizes(const at::Tensor& input, int64_t out) {
  std::vector<int64_t> sizes(input.sizes().begin(), input.sizes().end());
  sizes.back() = out;
  return sizes;
}

std::vector<c10::SymInt> sym_linear_output_sizes(const at::Tensor& input, const c10::SymInt& out) {
  std::vector<c10::SymInt> sizes(input.sym_sizes().begin(), input.sym_sizes().end());
  sizes.back() = out;
  return sizes;
}

void check_layer_output(const char* op, const at::Tensor& input, const c10::SymInt& out, const char* name,
                        const at::Tensor& t) {
  check_like(op, name, t, "input", input);
  const auto expected = sym_linear_output_sizes(input, out);
  TORCH_CHECK_VALUE(t.sym_sizes() == c10::SymIntArrayRef(expected), "fastffnn.", op, ": ", name,
                    " has shape ", t.sym_sizes(), ", expected ", c10::SymIntArrayRef(expected));
}

void check_class_index(const char* op, int64_t value, int64_t classes) {
  TORCH_CHECK_INDEX(value >= 0 && value < classes, "fastffnn.", op, ": target holds class index ",
                    value, " but there are only ", classes, " classes (valid: 0..", classes - 1,
                    ")");
}

// ------------------------------------------ the forward ops' argument checks
SymLinearShape check_linear_args(const char* op, bool reduced_precision, const at::Tensor& input,
                                 const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                                 const c10::string_view* activation) {
  if (activation) parse_activation(*activation);
  return check_linear(op, reduced_precision, "input", input, "weight", weight, "bias", bias);
}

std::pair<c10::SymInt, c10::SymInt> check_logits(const char* op, bool reduced_precision, const at::Tensor& logits) {
  check_floating(op, reduced_precision, "logits", logits);
  TORCH_CHECK_VALUE(logits.dim() >= 1 && logits.sym_size(-1) >= 1, "fastffnn.", op,
                    ": logits must have shape (..., classes) with at least one class, got ", logits.sym_sizes());
  return {leading_rows(logits.sym_sizes()), logits.sym_size(-1)};
}

LossArgs check_softmax_nll_args(bool reduced_precision, const at::Tensor& logits, const at::Tensor& target,
                                c10::string_view reduction) {
  constexpr const char* op = "softmax_nll";
  parse_reduction(reduction);
  auto [rows, classes] = check_logits(op, reduced_precision, logits);
  const bool is_index = check_target(op, logits.sym_sizes(), logits, target);
  return LossArgs{std::move(rows), std::move(classes), is_index};
}

SymNetworkShape check_ffnn_args(bool reduced_precision, const at::Tensor& input, const at::Tensor& V_weight,
                                const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                const c10::optional<at::Tensor>& W_bias, c10::string_view activation) {
  parse_activation(activation);
  return check_network("ffnn", reduced_precision, input, V_weight, V_bias, W_weight, W_bias);
}

NetworkLossArgs check_ffnn_nll_args(const char* op, bool reduced_precision, const at::Tensor& input,
                                    const at::Tensor& V_weight, const c10::optional<at::Tensor>& V_bias,
                                    const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias,
                                    const at::Tensor& target, c10::string_view activation,
                                    c10::string_view reduction) {
  parse_activation(activation);
  parse_reduction(reduction);
  auto s = check_network(op, reduced_precision, input, V_weight, V_bias, W_weight, W_bias);
  TORCH_CHECK_VALUE(s.out >= 1, "fastffnn.", op, ": the network needs at least one class, got ",
                    "W_weight of shape ", W_weight.sym_sizes());
  const bool is_index = check_target(op, sym_linear_output_sizes(input, s.out), input, target);
  return NetworkLossArgs{std::move(s), is_index};
}

NetworkLossArgs check_train_step_args(bool reduced_precision, const at::Tensor& input, const at::Tensor& target,
                                      at::TensorList params, bool has_bias, c10::string_view activation,
                                      c10::string_view reduction) {
  constexpr const char* op = "ffnn_nll_adam_step_";
  const size_t expected = has_bias ? 4 : 2;
  TORCH_CHECK_VALUE(params.size() == expected, "fastffnn.", op, ": params must be [V.weight, ",
                    has_bias ? "V.bias, W.weight, W.bias" : "W.weight", "], got ", params.size(), " tensors");
  TORCH_CHECK_VALUE(parse_reduction(reduction) != Reduction::None, "fastffnn.", op,
                    ": reduction must be 'mean' or 'sum' (a step needs one loss), got 'none'");
  const auto bias = [&](size_t i) { return has_bias ? c10::optional<at::Tensor>(params[i]) : c10::nullopt; };
  return check_ffnn_nll_args(op, reduced_precision, input, params[0], bias(1), params[has_bias ? 2 : 1], bias(3),
                             target, activation, reduction);
}

// ------------------------------------------ the network of any depth
MlpShape SymMlpShape::concrete() const {
  MlpShape s{rows.expect_int(), {}};
  for (const auto& n : sizes) s.sizes.push_back(n.expect_int());
  return s;
}

SymMlpShape check_mlp(const char* op, bool reduced_precision, const at::Tensor& input, at::TensorList weights,
                      const std::vector<c10::optional<at::Tensor>>* biases,
                      c10::ArrayRef<std::string> activations) {
  const size_t depth = weights.size();
  TORCH_CHECK_VALUE(depth >= 1, "fastffnn.", op, ": the network needs at least one layer, got no weights");
  TORCH_CHECK_VALUE(!biases || biases->size() == depth, "fastffnn.", op, ": got ", depth, " weights but ",
                    biases ? biases->size() : 0, " biases; give one bias (or None) per layer");
  TORCH_CHECK_VALUE(activations.size() == depth - 1, "fastffnn.", op, ": got ", activations.size(),
                    " activations for ", depth - 1, depth == 2 ? " hidden layer (" : " hidden layers (", depth,
                    " weights); give one per hidden layer");
  for (size_t k = 0; k < activations.size(); ++k) {
    TORCH_CHECK_VALUE(activations[k] == "tanh" || activations[k] == "relu" || activations[k] == "sigmoid",
                      "fastffnn.", op, ": activations[", k, "] must be one of 'tanh', 'relu', 'sigmoid', got '",
                      activations[k], "'");
  }
  check_floating(op, reduced_precision, "input", input);
  TORCH_CHECK_VALUE(input.dim() >= 1, "fastffnn.", op,
                    ": input must have at least 1 dimension (..., in_features), got a 0-d tensor");
  SymMlpShape s{leading_rows(input.sym_sizes()), {input.sym_size(-1)}};
  for (size_t k = 0; k < depth; ++k) {
    const std::string in_name = k == 0 ? std::string("input") : "the output of layer " + std::to_string(k - 1);
    const std::string weight_name = "weights[" + std::to_string(k) + "]";
    const std::string bias_name = "biases[" + std::to_string(k) + "]";
    c10::SymInt out = check_layer(op, in_name.c_str(), input, s.sizes.back(), weight_name.c_str(), weights[k],
                                  bias_name.c_str(), biases ? (*biases)[k] : c10::nullopt);
    TORCH_CHECK_VALUE(out >= 1, "fastffnn.", op, ": ", weight_name, " has shape ", weights[k].sym_sizes(),
                      ": layer ", k, " has no outputs; every layer needs a width of at least 1");
    s.sizes.push_back(std::move(out));
  }
  return s;
}

void check_mlp_hidden(const char* op, const at::Tensor& input, const SymMlpShape& s, at::TensorList hidden) {
  const size_t depth = s.sizes.size() - 1;
  TORCH_CHECK_VALUE(hidden.size() == depth - 1, "fastffnn.", op, ": got ", hidden.size(),
                    " hidden activations for ", depth - 1, " hidden layers");
  for (size_t k = 0; k < hidden.size(); ++k) {
    const std::string name = "hidden[" + std::to_string(k) + "]";
    check_layer_output(op, input, s.sizes[k + 1], name.c_str(), hidden[k]);
  }
}

MlpLossArgs check_mlp_nll_args(const char* op, bool reduced_precision, const at::Tensor& input,
                               at::TensorList weights, const std::vector<c10::optional<at::Tensor>>& biases,
                               const at::Tensor& target, c10::ArrayRef<std::string> activations,
                               c10::string_view reduction) {
  parse_reduction(reduction);
  auto s = check_mlp(op, reduced_precision, input, weights, &biases, activations);
  const bool is_index = check_target(op, sym_linear_output_sizes(input, s.sizes.back()), input, target);
  return MlpLossArgs{std::move(s), is_index};
}

MlpLossArgs check_mlp_train_step_args(const char* op, bool reduced_precision, const at::Tensor& input,
                                      const at::Tensor& target, at::TensorList params, bool has_bias,
                                      c10::ArrayRef<std::string> activations, c10::string_view reduction) {
  const size_t depth = activations.size() + 1, per_layer = has_bias ? 2 : 1;
  TORCH_CHECK_VALUE(params.size() == depth * per_layer, "fastffnn.", op, ": params must be ",
                    has_bias ? "[weights[0], biases[0], weights[1], biases[1], ...]" : "[weights[0], weights[1], ...]",
                    " for ", depth, " layers (", activations.size(), " activations), that is ", depth * per_layer,
                    " tensors; got ", params.size());
  TORCH_CHECK_VALUE(parse_reduction(reduction) != Reduction::None, "fastffnn.", op,
                    ": reduction must be 'mean' or 'sum' (a step needs one loss), got 'none'");
  std::vector<at::Tensor> weights;
  std::vector<c10::optional<at::Tensor>> biases;
  for (size_t k = 0; k < depth; ++k) {
    weights.push_back(params[k * per_layer]);
    biases.push_back(has_bias ? c10::optional<at::Tensor>(params[k * per_layer + 1]) : c10::nullopt);
  }
  return check_mlp_nll_args(op, reduced_precision, input, weights, biases, target, activations, reduction);
}

MlpLossArgs check_mlp_fit_args(const char* op, bool reduced_precision, const at::Tensor& input,
                               const at::Tensor& target, const at::Tensor& order, int64_t batch_size,
                               at::TensorList params, bool has_bias, c10::ArrayRef<std::string> activations,
                               double alpha, bool maximize, bool decoupled_decay) {
  TORCH_CHECK_VALUE(input.dim() == 2 && input.sym_size(0) >= 1, "fastffnn.", op,
                    ": input must be (examples, features) with at least one example, got shape ", input.sym_sizes());
  TORCH_CHECK_VALUE(order.dim() == 1 && order.scalar_type() == at::kLong && order.device().is_cpu(), "fastffnn.",
                    op, ": order must be a 1-D int64 CPU tensor of row indices, got ", order.scalar_type(),
                    " of shape ", order.sym_sizes(), " on ", order.device());
  TORCH_CHECK_VALUE(batch_size >= 1, "fastffnn.", op, ": batch_size must be at least 1, got ", batch_size);
  TORCH_CHECK_VALUE(std::isfinite(alpha) && alpha >= 0, "fastffnn.", op,
                    ": alpha must be a finite number >= 0, got ", alpha);
  TORCH_CHECK_VALUE(alpha == 0 || !maximize, "fastffnn.", op,
                    ": alpha, an L2 penalty added to the loss, cannot be combined with maximize=True");
  TORCH_CHECK_VALUE(alpha == 0 || !decoupled_decay, "fastffnn.", op,
                    ": alpha, an L2 penalty added to the loss, cannot be combined with decoupled weight decay "
                    "(weight_decay != 0 with decoupled_weight_decay=True)");
  return check_mlp_train_step_args(op, reduced_precision, input, target, params, has_bias, activations, "mean");
}

void check_fit_values(const char* op, const at::Tensor& input, const at::Tensor& target, const at::Tensor& order,
                      bool is_index, int64_t classes) {
  const int64_t n = input.size(0);
  if (order.numel() > 0) {
    const auto [lo, hi] = at::aminmax(order);
    TORCH_CHECK_INDEX(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < n, "fastffnn.", op,
                      ": order must index the ", n, " rows of input, got values from ", lo.item<int64_t>(), " to ",
                      hi.item<int64_t>());
  }
  if (is_index && n > 0) {
    const auto [lo, hi] = at::aminmax(target);
    for (const int64_t label : {lo.item<int64_t>(), hi.item<int64_t>()}) check_class_index(op, label, classes);
  }
}

namespace {

void check_state(const char* op, const char* name, const at::Tensor& t, const at::Tensor& param, size_t i) {
  TORCH_CHECK_VALUE(t.device() == param.device() && t.scalar_type() == param.scalar_type() &&
                        t.sizes() == param.sizes(),
                    "fastffnn.", op, ": ", name, "[", i, "] must be a ", param.scalar_type(), " tensor of shape ",
                    param.sizes(), " on ", param.device(), ", got ", t.scalar_type(), " of shape ", t.sizes(), " on ",
                    t.device());
}

void check_params(const char* op, bool reduced_precision, c10::DeviceType device_type, at::TensorList params,
                  at::TensorList grads) {
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK_VALUE(p.device().type() == device_type && p.device() == params[0].device(), "fastffnn.", op,
                      ": params[", i, "] is on ", p.device(), " but this kernel takes ", c10::DeviceType(device_type),
                      " tensors, all on one device (params[0] is on ", params[0].device(), ")");
    check_floating(op, reduced_precision, "params", p);
    if (!grads.empty()) check_state(op, "grads", grads[i], p, i);
  }
}

}  // namespace

void check_adam_args(const char* op, bool reduced_precision, c10::DeviceType device_type, at::TensorList params,
                     at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                     at::TensorList max_exp_avg_sqs, at::TensorList steps, const AdamConfig& c) {
  const size_t n = params.size();
  TORCH_CHECK_VALUE((grads.empty() || grads.size() == n) && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                        steps.size() == n && max_exp_avg_sqs.size() == (c.amsgrad ? n : 0),
                    "fastffnn.", op, ": got ", n, " params, ", grads.size(), " grads, ", exp_avgs.size(),
                    " exp_avgs, ", exp_avg_sqs.size(), " exp_avg_sqs, ", max_exp_avg_sqs.size(),
                    " max_exp_avg_sqs (", c.amsgrad ? n : 0, " expected) and ", steps.size(), " steps");
  TORCH_CHECK_VALUE(c.lr >= 0 && c.eps >= 0 && c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1 &&
                        c.weight_decay >= 0,
                    "fastffnn.", op, ": invalid hyper-parameters lr=", c.lr, " betas=(", c.beta1, ", ", c.beta2,
                    ") eps=", c.eps, " weight_decay=", c.weight_decay);
  check_params(op, reduced_precision, device_type, params, grads);
  // all CPU counters, or all on the parameters' device (capturable): not a mix, which no optimizer keeps
  const bool on_device = n != 0 && !steps[0].device().is_cpu();
  for (size_t i = 0; i < n; ++i) {
    check_state(op, "exp_avgs", exp_avgs[i], params[i], i);
    check_state(op, "exp_avg_sqs", exp_avg_sqs[i], params[i], i);
    if (c.amsgrad) check_state(op, "max_exp_avg_sqs", max_exp_avg_sqs[i], params[i], i);
    const at::Tensor& step = steps[i];
    TORCH_CHECK_VALUE(step.numel() == 1 && step.is_floating_point(), "fastffnn.", op, ": steps[", i,
                      "] must be a floating tensor with one element, got ", step.scalar_type(), " of shape ",
                      step.sizes(), " on ", step.device());
    if (on_device) {
      TORCH_CHECK_VALUE(step.device() == params[i].device() && device_type != c10::DeviceType::CPU &&
                            (step.scalar_type() == at::kFloat || step.scalar_type() == at::kDouble),
                        "fastffnn.", op, ": steps[0] is on ", steps[0].device(),
                        ", so every step counter must be a float32 or float64 tensor on its parameter's device "
                        "(capturable), but steps[", i, "] is ", step.scalar_type(), " on ", step.device(),
                        " for a parameter on ", params[i].device());
    } else {
      TORCH_CHECK_VALUE(step.device().is_cpu(), "fastffnn.", op, ": steps[0] is on the CPU, so every step counter "
                        "must be, but steps[", i, "] is on ", step.device());
    }
  }
}

void check_sgd_args(const char* op, bool reduced_precision, c10::DeviceType device_type, at::TensorList params,
                    at::TensorList grads, at::TensorList momentum_buffers, size_t fresh, const SgdConfig& c) {
  const size_t n = params.size(), with_buffers = c.momentum != 0 ? n : 0;
  TORCH_CHECK_VALUE((grads.empty() || grads.size() == n) && momentum_buffers.size() == with_buffers &&
                        fresh == with_buffers,
                    "fastffnn.", op, ": got ", n, " params, ", grads.size(), " grads, ", momentum_buffers.size(),
                    " momentum_buffers and ", fresh, " fresh flags (", with_buffers,
                    " of each expected with momentum=", c.momentum, ")");
  TORCH_CHECK_VALUE(c.lr >= 0 && c.momentum >= 0 && c.weight_decay >= 0 &&
                        (!c.nesterov || (c.momentum > 0 && c.dampening == 0)),
                    "fastffnn.", op, ": invalid hyper-parameters lr=", c.lr, " momentum=", c.momentum,
                    " dampening=", c.dampening, " weight_decay=", c.weight_decay, " nesterov=", c.nesterov,
                    " (nesterov needs a momentum and zero dampening)");
  check_params(op, reduced_precision, device_type, params, grads);
  for (size_t i = 0; i < with_buffers; ++i) check_state(op, "momentum_buffers", momentum_buffers[i], params[i], i);
}

double lr_value(const char* op, const at::Tensor& lr) {
  TORCH_CHECK_VALUE(lr.device().is_cpu() && lr.numel() == 1 && lr.is_floating_point(), "fastffnn.", op,
                    ": a Tensor lr must be a floating CPU tensor with one element, got ", lr.scalar_type(),
                    " of shape ", lr.sizes(), " on ", lr.device());
  return lr.item<double>();
}

double advance_step(const at::Tensor& step) {
  double count = 0;
  AT_DISPATCH_FLOATING_TYPES(step.scalar_type(), "fastffnn.advance_step", [&] {
    scalar_t* s = step.data_ptr<scalar_t>();
    *s += 1;
    count = static_cast<double>(*s);
  });
  return count;
}

double read_step(const at::Tensor& step) {
  double count = 0;
  AT_DISPATCH_FLOATING_TYPES(step.scalar_type(), "fastffnn.read_step",
                             [&] { count = static_cast<double>(*step.const_data_ptr<scalar_t>()); });
  return count;
}

void write_step(const at::Tensor& step, double value) {
  AT_DISPATCH_FLOATING_TYPES(step.scalar_type(), "fastffnn.write_step",
                             [&] { *step.data_ptr<scalar_t>() = static_cast<scalar_t>(value); });
}

bool reduced_precision_on(const c10::Device& device) {
#ifdef FASTFFNN_CUDA_EMULATION
  return device.is_cuda() || device.is_cpu();
#else
  return device.is_cuda();
#endif
}

}  // namespace fastffnn

// The checks as ops of their own (fastffnn::_check_<op>, csrc/registration.cpp),
// for the fake kernels. CompositeImplicitAutograd, so they run in C++ on
// whatever tensors they are given, FakeTensors included, where a Meta kernel
// would see every FakeTensor as a meta tensor and could check neither devices
// nor the CUDA-only dtypes.
static void register_checks(torch::Library& m) {
  using at::Tensor;
  using c10::optional;
  using fastffnn::reduced_precision_on;
  m.impl("_check_linear_act", [](const Tensor& x, const Tensor& w, const optional<Tensor>& b,
                                 c10::string_view act) {
    fastffnn::check_linear_args("linear_act", reduced_precision_on(x.device()), x, w, b, &act);
  });
  m.impl("_check_linear_softmax", [](const Tensor& x, const Tensor& w, const optional<Tensor>& b) {
    fastffnn::check_linear_args("linear_softmax", reduced_precision_on(x.device()), x, w, b, nullptr);
  });
  m.impl("_check_softmax_nll", [](const Tensor& z, const Tensor& target, c10::string_view reduction) {
    fastffnn::check_softmax_nll_args(reduced_precision_on(z.device()), z, target, reduction);
  });
  m.impl("_check_ffnn", [](const Tensor& x, const Tensor& Vw, const optional<Tensor>& Vb, const Tensor& Ww,
                           const optional<Tensor>& Wb, c10::string_view act) {
    fastffnn::check_ffnn_args(reduced_precision_on(x.device()), x, Vw, Vb, Ww, Wb, act);
  });
  m.impl("_check_ffnn_nll", [](const Tensor& x, const Tensor& Vw, const optional<Tensor>& Vb, const Tensor& Ww,
                               const optional<Tensor>& Wb, const Tensor& target, c10::string_view act,
                               c10::string_view reduction) {
    fastffnn::check_ffnn_nll_args("ffnn_nll", reduced_precision_on(x.device()), x, Vw, Vb, Ww, Wb, target, act,
                                  reduction);
  });
  m.impl("_check_mlp", [](const Tensor& x, at::TensorList weights, const c10::List<optional<Tensor>>& biases,
                          c10::ArrayRef<std::string> acts) {
    const std::vector<optional<Tensor>> b = biases.vec();
    fastffnn::check_mlp("mlp", reduced_precision_on(x.device()), x, weights, &b, acts);
  });
  m.impl("_check_mlp_nll", [](const Tensor& x, at::TensorList weights, const c10::List<optional<Tensor>>& biases,
                              const Tensor& target, c10::ArrayRef<std::string> acts, c10::string_view reduction) {
    const std::vector<optional<Tensor>> b = biases.vec();
    fastffnn::check_mlp_nll_args("mlp_nll", reduced_precision_on(x.device()), x, weights, b, target, acts,
                                 reduction);
  });
  m.impl("_check_mlp_nll_adam_step_", [](const Tensor& x, const Tensor& target, at::TensorList params,
                                         bool has_bias, c10::ArrayRef<std::string> acts,
                                         c10::string_view reduction) {
    fastffnn::check_mlp_train_step_args("mlp_nll_adam_step_", reduced_precision_on(x.device()), x, target, params,
                                        has_bias, acts, reduction);
  });
  m.impl("_check_mlp_nll_sgd_step_", [](const Tensor& x, const Tensor& target, at::TensorList params,
                                        bool has_bias, c10::ArrayRef<std::string> acts, c10::string_view reduction) {
    fastffnn::check_mlp_train_step_args("mlp_nll_sgd_step_", reduced_precision_on(x.device()), x, target, params,
                                        has_bias, acts, reduction);
  });
  m.impl("_check_mlp_nll_fit_", [](c10::string_view op, const Tensor& x, const Tensor& target, const Tensor& order,
                                   int64_t batch_size, at::TensorList params, bool has_bias,
                                   c10::ArrayRef<std::string> acts, double alpha, bool maximize,
                                   bool decoupled_decay) {
    const std::string name(op);
    fastffnn::check_mlp_fit_args(name.c_str(), reduced_precision_on(x.device()), x, target, order, batch_size,
                                 params, has_bias, acts, alpha, maximize, decoupled_decay);
  });
  m.impl("_check_ffnn_nll_adam_step_", [](const Tensor& x, const Tensor& target, at::TensorList params,
                                          bool has_bias, c10::string_view act, c10::string_view reduction) {
    fastffnn::check_train_step_args(reduced_precision_on(x.device()), x, target, params, has_bias, act, reduction);
  });
}

TORCH_LIBRARY_IMPL(fastffnn, CompositeImplicitAutograd, m) { register_checks(m); }
// Under vmap (the transforms' route of fastffnn.ops.mlp checks the whole network first), where a
// BatchedTensor shows each sample's shape, which is what the checks are about.
TORCH_LIBRARY_IMPL(fastffnn, FuncTorchBatchedDecomposition, m) { register_checks(m); }
