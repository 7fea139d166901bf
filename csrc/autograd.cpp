// First-order autograd of the forward ops, in C++ at the Autograd key, so that
// a differentiable call is one op call and its backward one C++ node whose
// body is the op's native *_backward kernel.
//
// Two derivative paths leave each node:
// * an ordinary backward (grad mode off inside it): the native *_backward,
//   asked only for the gradients autograd needs;
// * a backward that records a graph (create_graph=True: double backward,
//   gradient penalties, Hessian-vector products): the closed-form gradient
//   written below with differentiable ATen ops, recomputing the forward from
//   the saved inputs, so every higher derivative is exact. The same formulas
//   are the ops *_backward_differentiable (CompositeImplicitAutograd), which
//   the Python autograd.Functions of fastffnn.autograd use under torch.func
//   transforms, where a gradient must itself be transformable.
//
// Forward-mode AD and vmap rules live in those Python Functions; the Python
// API (fastffnn.ops) routes there when a transform or a dual level is active.
// A dual tensor that reaches a node here directly raises instead of losing
// its tangent.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "activation.h"
#include "signatures.h"

namespace fastffnn {

// ------------------------------------------------ closed-form gradients
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor placeholder(const at::Tensor& like) { return at::empty({0}, like.options()); }

// (rows, features) view of a (..., features) tensor; a 1-D tensor is one row.
at::Tensor rows2d(const at::Tensor& t) { return t.dim() == 1 ? t.unsqueeze(0) : t.flatten(0, -2); }

at::Tensor act_forward(const at::Tensor& z, Activation a) {
  switch (a) {
    case Activation::Tanh: return at::tanh(z);
    case Activation::ReLU: return at::relu(z);
    case Activation::Sigmoid: return at::sigmoid(z);
  }
  TORCH_INTERNAL_ASSERT(false);
}

// dL/dz from dL/dh for h = act(z), with the derivative taken from h as the
// native kernels take it (ReLU's: 1 where z > 0, 0 at z = 0 as in torch).
at::Tensor act_backward(const at::Tensor& dh, const at::Tensor& z, const at::Tensor& h, Activation a) {
  switch (a) {
    case Activation::Tanh: return dh * (1 - h * h);
    case Activation::ReLU: return dh * (z > 0).to(dh.scalar_type());
    case Activation::Sigmoid: return dh * h * (1 - h);
  }
  TORCH_INTERNAL_ASSERT(false);
}

// dL/dz from dL/dout for out = softmax(z) (log_softmax if log).
at::Tensor softmax_backward(const at::Tensor& g, const at::Tensor& z, bool log) {
  const auto p = at::softmax(z, -1);
  if (log) return g - p * g.sum(-1, /*keepdim=*/true);
  return p * (g - (g * p).sum(-1, /*keepdim=*/true));
}

// dL/dz for the cross-entropy of softmax(z) against `target` (as
// softmax_nll), and the probability target's gradient into *grad_target.
at::Tensor nll_backward(const at::Tensor& grad_loss, const at::Tensor& z, const at::Tensor& target,
                        Reduction reduction, at::Tensor* grad_target) {
  const auto lead = z.sizes().slice(0, z.dim() - 1);
  at::Tensor w = grad_loss;
  if (reduction == Reduction::Mean) w = w / c10::multiply_integers(lead.begin(), lead.end());
  if (reduction != Reduction::None) w = w.expand(lead);
  w = w.unsqueeze(-1);
  const auto log_p = at::log_softmax(z, -1);
  if (grad_target) *grad_target = -w * log_p;
  if (target.is_floating_point()) return w * (target.sum(-1, /*keepdim=*/true) * log_p.exp() - target);
  const auto one_hot = at::zeros_like(z).scatter(-1, target.to(at::kLong).unsqueeze(-1), 1);
  return w * (log_p.exp() - one_hot);
}

// Gradients of a linear layer z = x @ w^T + b given dz: (x, w, b) as asked.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_grads(const at::Tensor& dz, const at::Tensor& x,
                                                            const at::Tensor& w, std::array<bool, 3> mask) {
  return {mask[0] ? at::matmul(dz, w) : placeholder(x),
          mask[1] ? rows2d(dz).t().mm(rows2d(x)) : placeholder(x),
          mask[2] ? rows2d(dz).sum(0) : placeholder(x)};
}

// The network's five gradients given dz2 = dL/d(logits), z1 = V(x), h = act(z1).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> network_grads(
    const at::Tensor& dz2, const at::Tensor& x, const at::Tensor& V_weight, const at::Tensor& W_weight,
    const at::Tensor& z1, const at::Tensor& h, Activation act, c10::ArrayRef<bool> mask) {
  auto [gh, gWw, gWb] = linear_grads(dz2, h, W_weight, {mask[0] || mask[1] || mask[2], mask[3], mask[4]});
  if (!(mask[0] || mask[1] || mask[2])) return {placeholder(x), placeholder(x), placeholder(x), gWw, gWb};
  auto [gx, gVw, gVb] = linear_grads(act_backward(gh, z1, h, act), x, V_weight, {mask[0], mask[1], mask[2]});
  return {gx, gVw, gVb, gWw, gWb};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_act_backward_differentiable(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, c10::string_view activation, std::array<bool, 3> output_mask) {
  const Activation act = parse_activation(activation);
  const auto z = at::linear(input, weight, bias);
  return linear_grads(act_backward(grad_output, z, act_forward(z, act), act), input, weight, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_softmax_backward_differentiable(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const c10::optional<at::Tensor>& bias, bool log, std::array<bool, 3> output_mask) {
  const auto z = at::linear(input, weight, bias);
  return linear_grads(softmax_backward(grad_output, z, log), input, weight, output_mask);
}

std::tuple<at::Tensor, at::Tensor> softmax_nll_backward_differentiable(const at::Tensor& grad_loss,
                                                                       const at::Tensor& logits,
                                                                       const at::Tensor& target,
                                                                       c10::string_view reduction,
                                                                       std::array<bool, 2> output_mask) {
  const bool want_target = output_mask[1] && target.is_floating_point();
  at::Tensor gt = placeholder(logits);
  auto dz = nll_backward(grad_loss, logits, target, parse_reduction(reduction), want_target ? &gt : nullptr);
  return {output_mask[0] ? dz : placeholder(logits), gt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ffnn_backward_differentiable(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& V_weight,
    const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight, const c10::optional<at::Tensor>& W_bias,
    c10::string_view activation, bool log, std::array<bool, 5> output_mask) {
  const Activation act = parse_activation(activation);
  const auto z1 = at::linear(input, V_weight, V_bias);
  const auto h = act_forward(z1, act);
  const auto dz2 = softmax_backward(grad_output, at::linear(h, W_weight, W_bias), log);
  return network_grads(dz2, input, V_weight, W_weight, z1, h, act, output_mask);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
ffnn_nll_backward_differentiable(const at::Tensor& grad_loss, const at::Tensor& input, const at::Tensor& V_weight,
                                 const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                 const c10::optional<at::Tensor>& W_bias, const at::Tensor& target,
                                 c10::string_view activation, c10::string_view reduction,
                                 std::array<bool, 6> output_mask) {
  const Activation act = parse_activation(activation);
  const auto z1 = at::linear(input, V_weight, V_bias);
  const auto h = act_forward(z1, act);
  const bool want_target = output_mask[5] && target.is_floating_point();
  at::Tensor gt = placeholder(input);
  const auto dz2 = nll_backward(grad_loss, at::linear(h, W_weight, W_bias), target, parse_reduction(reduction),
                                want_target ? &gt : nullptr);
  auto [gx, gVw, gVb, gWw, gWb] =
      network_grads(dz2, input, V_weight, W_weight, z1, h, act, c10::ArrayRef<bool>(output_mask.data(), 5));
  return {gx, gVw, gVb, gWw, gWb, gt};
}

// ------------------------------------ the network of any depth (mlp ops)
namespace {

// The forward of a network recomputed with differentiable ATen ops: z[k] the
// pre-activation of hidden layer k, a[k] the input of layer k (a[0] = x).
struct Recomputed {
  std::vector<at::Tensor> z, a;
  at::Tensor logits;
};

Recomputed recompute(const at::Tensor& x, at::TensorList weights,
                     const std::vector<c10::optional<at::Tensor>>& biases, const std::vector<Activation>& acts) {
  Recomputed r;
  r.a.push_back(x);
  for (size_t k = 0; k + 1 < weights.size(); ++k) {
    r.z.push_back(at::linear(r.a.back(), weights[k], biases[k]));
    r.a.push_back(act_forward(r.z.back(), acts[k]));
  }
  r.logits = at::linear(r.a.back(), weights.back(), biases.back());
  return r;
}

// The network's gradients given dz = dL/d(logits): (input, weights, biases),
// placeholders where `mask` does not ask; mask is [input, weights..., biases...].
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> network_grads_differentiable(
    at::Tensor dz, const Recomputed& r, at::TensorList weights, const std::vector<Activation>& acts,
    const std::vector<bool>& mask) {
  const size_t depth = weights.size();
  const auto below = [&](size_t k) {
    if (mask[0]) return true;
    for (size_t j = 0; j < k; ++j)
      if (mask[1 + j] || mask[1 + depth + j]) return true;
    return false;
  };
  at::Tensor gx = placeholder(r.a[0]);
  std::vector<at::Tensor> gw(depth, placeholder(r.a[0])), gb(depth, placeholder(r.a[0]));
  for (size_t k = depth; k-- > 0;) {
    if (mask[1 + k]) gw[k] = rows2d(dz).t().mm(rows2d(r.a[k]));
    if (mask[1 + depth + k]) gb[k] = rows2d(dz).sum(0);
    if (!below(k)) break;
    at::Tensor da = at::matmul(dz, weights[k]);
    if (k == 0) {
      gx = da;
      break;
    }
    dz = act_backward(da, r.z[k - 1], r.a[k], acts[k - 1]);
  }
  return {gx, gw, gb};
}

std::vector<Activation> parse_activations(c10::ArrayRef<std::string> names) {
  std::vector<Activation> acts;
  for (const auto& n : names) acts.push_back(parse_activation(n));
  return acts;
}

}  // namespace

// ----------------------------------------------------------- the nodes
namespace autograd {
namespace {

// The op `name`, typed by its kernels' signature (csrc/signatures.h).
template <typename Fn>
c10::TypedOperatorHandle<Fn> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

#define FASTFFNN_OP(name) \
  ([]() -> const auto& { static const auto h = op_handle<signature::name>("fastffnn::" #name); return h; }())

bool requires_grad(const at::Tensor& t) { return t.defined() && t.requires_grad(); }
bool requires_grad(const c10::optional<at::Tensor>& t) { return t.has_value() && requires_grad(*t); }
bool is_dual(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
bool is_dual(const c10::optional<at::Tensor>& t) { return t.has_value() && is_dual(*t); }

// Whether the call goes through the node: it records a graph, or a tensor
// carries a forward-mode tangent (also under no_grad, where forward AD still
// runs), in which case the node's missing jvp raises rather than drop it.
template <typename... Ts>
bool records(const Ts&... tensors) {
  return (at::GradMode::is_enabled() && (requires_grad(tensors) || ...)) || (is_dual(tensors) || ...);
}

const at::Tensor& or_undefined(const c10::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t.has_value() ? *t : undefined;
}
c10::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// ctx->needs_input_grad per argument: the node has an edge for each defined
// tensor argument only, in order.
template <size_t N>
std::array<bool, N> needed(AutogradContext* ctx, std::array<bool, N> is_tensor) {
  std::array<bool, N> out{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i)
    if (is_tensor[i]) out[i] = ctx->needs_input_grad(edge++);
  return out;
}

// The gradients as the node returns them: undefined where not asked for
// (the kernels' [0] placeholders), then undefined for the trailing
// non-tensor arguments.
template <typename Tuple, size_t N>
variable_list node_grads(Tuple&& grads, std::array<bool, N> mask, size_t trailing) {
  variable_list out;
  size_t i = 0;
  std::apply([&](auto&... g) { ((out.push_back(mask[i++] ? g : at::Tensor())), ...); }, grads);
  out.resize(out.size() + trailing);
  return out;
}

template <typename Tuple>
variable_list to_list(Tuple&& t) {
  return std::apply([](auto&... v) { return variable_list{v...}; }, t);
}

// One layer y = f(x @ w^T + b): linear_act (option: the activation's name)
// and linear_softmax (option: log).
template <typename Option, typename Derived>
struct LayerBackward : torch::autograd::Function<Derived> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, Option option) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto out = Derived::op().call(input, weight, bias, option);
    ctx->save_for_backward({input, weight, or_undefined(bias), out});
    ctx->saved_data["option"] = Derived::save(option);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto &input = saved[0], &weight = saved[1], &bias = saved[2], &out = saved[3];
    const auto option = Derived::load(ctx->saved_data["option"]);
    const auto mask = needed<3>(ctx, {true, true, bias.defined()});
    if (at::GradMode::is_enabled())
      return node_grads(Derived::differentiable(grad_outputs[0], input, weight, as_optional(bias), option, mask),
                        mask, 1);
    return node_grads(Derived::backward_op().call(grad_outputs[0], input, weight, out, option, mask), mask, 1);
  }
};

struct LinearActBackward : LayerBackward<c10::string_view, LinearActBackward> {
  static const auto& op() { return FASTFFNN_OP(linear_act); }
  static const auto& backward_op() { return FASTFFNN_OP(linear_act_backward); }
  static c10::IValue save(c10::string_view s) { return std::string(s); }
  static std::string load(const c10::IValue& v) { return v.toStringRef(); }
  static constexpr auto differentiable = &linear_act_backward_differentiable;
};

struct LinearSoftmaxBackward : LayerBackward<bool, LinearSoftmaxBackward> {
  static const auto& op() { return FASTFFNN_OP(linear_softmax); }
  static const auto& backward_op() { return FASTFFNN_OP(linear_softmax_backward); }
  static c10::IValue save(bool b) { return b; }
  static bool load(const c10::IValue& v) { return v.toBool(); }
  static constexpr auto differentiable = &linear_softmax_backward_differentiable;
};

at::Tensor linear_act(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                      c10::string_view activation) {
  if (!records(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(linear_act).call(input, weight, bias, activation);
  }
  return LinearActBackward::apply(input, weight, bias, activation);
}

at::Tensor linear_softmax(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                          bool log) {
  if (!records(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(linear_softmax).call(input, weight, bias, log);
  }
  return LinearSoftmaxBackward::apply(input, weight, bias, log);
}

struct SoftmaxNllBackward : torch::autograd::Function<SoftmaxNllBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse] = FASTFFNN_OP(softmax_nll).call(logits, target, reduction);
    ctx->mark_non_differentiable({lse});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({logits, target, lse});
    ctx->saved_data["reduction"] = std::string(reduction);
    return {loss, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return variable_list(3);
    const auto saved = ctx->get_saved_variables();
    const auto &logits = saved[0], &target = saved[1], &lse = saved[2];
    const auto reduction = ctx->saved_data["reduction"].toStringRef();
    auto mask = needed<2>(ctx, {true, true});
    mask[1] = mask[1] && target.is_floating_point();
    if (at::GradMode::is_enabled())
      return node_grads(softmax_nll_backward_differentiable(grad_outputs[0], logits, target, reduction, mask),
                        mask, 1);
    return node_grads(FASTFFNN_OP(softmax_nll_backward).call(grad_outputs[0], logits, target, lse, reduction, mask),
                      mask, 1);
  }
};

std::tuple<at::Tensor, at::Tensor> softmax_nll(const at::Tensor& logits, const at::Tensor& target,
                                               c10::string_view reduction) {
  if (!records(logits, target)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(softmax_nll).call(logits, target, reduction);
  }
  auto out = SoftmaxNllBackward::apply(logits, target, reduction);
  return {out[0], out[1]};
}

struct FfnnBackward : torch::autograd::Function<FfnnBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& V_weight,
                               const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                               const c10::optional<at::Tensor>& W_bias, c10::string_view activation, bool log) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, hidden] = FASTFFNN_OP(ffnn).call(input, V_weight, V_bias, W_weight, W_bias, activation, log);
    ctx->mark_non_differentiable({hidden});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({input, V_weight, or_undefined(V_bias), W_weight, or_undefined(W_bias), hidden, out});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["log"] = log;
    return {out, hidden};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return variable_list(7);
    const auto saved = ctx->get_saved_variables();
    const auto &input = saved[0], &Vw = saved[1], &Vb = saved[2], &Ww = saved[3], &Wb = saved[4];
    const auto &hidden = saved[5], &out = saved[6];
    const auto activation = ctx->saved_data["activation"].toStringRef();
    const bool log = ctx->saved_data["log"].toBool();
    const auto mask = needed<5>(ctx, {true, true, Vb.defined(), true, Wb.defined()});
    if (at::GradMode::is_enabled())
      return node_grads(ffnn_backward_differentiable(grad_outputs[0], input, Vw, as_optional(Vb), Ww,
                                                     as_optional(Wb), activation, log, mask),
                        mask, 2);
    return node_grads(
        FASTFFNN_OP(ffnn_backward).call(grad_outputs[0], input, Vw, Ww, hidden, out, activation, log, mask), mask,
        2);
  }
};

std::tuple<at::Tensor, at::Tensor> ffnn(const at::Tensor& input, const at::Tensor& V_weight,
                                        const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                                        const c10::optional<at::Tensor>& W_bias, c10::string_view activation,
                                        bool log) {
  if (!records(input, V_weight, V_bias, W_weight, W_bias)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(ffnn).call(input, V_weight, V_bias, W_weight, W_bias, activation, log);
  }
  auto out = FfnnBackward::apply(input, V_weight, V_bias, W_weight, W_bias, activation, log);
  return {out[0], out[1]};
}

struct FfnnNllBackward : torch::autograd::Function<FfnnNllBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& V_weight,
                               const c10::optional<at::Tensor>& V_bias, const at::Tensor& W_weight,
                               const c10::optional<at::Tensor>& W_bias, const at::Tensor& target,
                               c10::string_view activation, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, hidden, log_probs] =
        FASTFFNN_OP(ffnn_nll).call(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction);
    ctx->mark_non_differentiable({hidden, log_probs});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(
        {input, V_weight, or_undefined(V_bias), W_weight, or_undefined(W_bias), target, hidden, log_probs});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["reduction"] = std::string(reduction);
    return {loss, hidden, log_probs};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    if (!grad_outputs[0].defined()) return variable_list(8);
    const auto saved = ctx->get_saved_variables();
    const auto &input = saved[0], &Vw = saved[1], &Vb = saved[2], &Ww = saved[3], &Wb = saved[4];
    const auto &target = saved[5], &hidden = saved[6], &log_probs = saved[7];
    const auto activation = ctx->saved_data["activation"].toStringRef();
    const auto reduction = ctx->saved_data["reduction"].toStringRef();
    auto mask = needed<6>(ctx, {true, true, Vb.defined(), true, Wb.defined(), true});
    mask[5] = mask[5] && target.is_floating_point();
    if (at::GradMode::is_enabled())
      return node_grads(ffnn_nll_backward_differentiable(grad_outputs[0], input, Vw, as_optional(Vb), Ww,
                                                         as_optional(Wb), target, activation, reduction, mask),
                        mask, 2);
    return node_grads(FASTFFNN_OP(ffnn_nll_backward)
                          .call(grad_outputs[0], input, Vw, Ww, hidden, log_probs, target, activation, reduction,
                                mask),
                      mask, 2);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> ffnn_nll(const at::Tensor& input, const at::Tensor& V_weight,
                                                        const c10::optional<at::Tensor>& V_bias,
                                                        const at::Tensor& W_weight,
                                                        const c10::optional<at::Tensor>& W_bias,
                                                        const at::Tensor& target, c10::string_view activation,
                                                        c10::string_view reduction) {
  if (!records(input, V_weight, V_bias, W_weight, W_bias, target)) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(ffnn_nll).call(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction);
  }
  auto out = FfnnNllBackward::apply(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction);
  return {out[0], out[1], out[2]};
}

bool records_any(at::TensorList ts) {
  for (const auto& t : ts)
    if (records(t)) return true;
  return false;
}
bool records_any(const c10::List<c10::optional<at::Tensor>>& ts) {
  for (const c10::optional<at::Tensor> t : ts)
    if (records(t)) return true;
  return false;
}

// The defined biases, which are the node's bias edges, and which layers have one.
std::pair<std::vector<at::Tensor>, c10::List<bool>> split_biases(const c10::List<c10::optional<at::Tensor>>& biases) {
  std::pair<std::vector<at::Tensor>, c10::List<bool>> out;
  for (const c10::optional<at::Tensor> b : biases) {
    const bool has = b.has_value() && b->defined();
    out.second.push_back(has);
    if (has) out.first.push_back(*b);
  }
  return out;
}

// The network's node, shared by mlp and mlp_nll. Its edges are the input,
// the weights, the defined biases and (mlp_nll) the target; the mask of the
// backward ops is [input, weights..., biases..., (target)].
struct NetworkEdges {
  size_t depth;
  c10::List<bool> has_bias;

  // The backward ops' mask from the node's edges, starting at edge 0 (the input).
  std::vector<bool> mask(AutogradContext* ctx, bool with_target) const {
    std::vector<bool> m(1 + 2 * depth + (with_target ? 1 : 0), false);
    size_t edge = 0;
    m[0] = ctx->needs_input_grad(edge++);
    for (size_t k = 0; k < depth; ++k) m[1 + k] = ctx->needs_input_grad(edge++);
    for (size_t k = 0; k < depth; ++k)
      if (has_bias.get(k)) m[1 + depth + k] = ctx->needs_input_grad(edge++);
    if (with_target) m.back() = ctx->needs_input_grad(edge++);
    return m;
  }

  // The node's gradients in edge order, then `trailing` undefined ones for the other arguments.
  variable_list grads(const at::Tensor& gx, const std::vector<at::Tensor>& gw, const std::vector<at::Tensor>& gb,
                      const at::Tensor* gt, const std::vector<bool>& m, size_t trailing) const {
    variable_list out;
    out.push_back(m[0] ? gx : at::Tensor());
    for (size_t k = 0; k < depth; ++k) out.push_back(m[1 + k] ? gw[k] : at::Tensor());
    for (size_t k = 0; k < depth; ++k)
      if (has_bias.get(k)) out.push_back(m[1 + depth + k] ? gb[k] : at::Tensor());
    if (gt) out.push_back(m.back() ? *gt : at::Tensor());
    out.resize(out.size() + trailing);
    return out;
  }

  size_t bias_count() const {
    size_t n = 0;
    for (size_t k = 0; k < depth; ++k) n += has_bias.get(k);
    return n;
  }

  static NetworkEdges load(AutogradContext* ctx) {
    return {static_cast<size_t>(ctx->saved_data["depth"].toInt()), ctx->saved_data["has_bias"].toBoolList()};
  }
  void save(AutogradContext* ctx) const {
    ctx->saved_data["depth"] = static_cast<int64_t>(depth);
    ctx->saved_data["has_bias"] = has_bias;
  }
  // The saved biases as the forward took them, from the saved defined ones.
  std::vector<c10::optional<at::Tensor>> biases(const variable_list& defined) const {
    std::vector<c10::optional<at::Tensor>> out;
    size_t i = 0;
    for (size_t k = 0; k < depth; ++k)
      out.push_back(has_bias.get(k) ? c10::optional<at::Tensor>(defined[i++]) : c10::nullopt);
    return out;
  }
};

// What both network nodes save: `first` (the input, and mlp_nll's target), the weights, the defined
// biases, the hidden activations and `last` (the output or the log-probabilities), in that order, with
// the layout and the activations; `no_grad` are the outputs that carry no gradient. One call of
// mark_non_differentiable, which replaces what an earlier call marked.
void save_network(AutogradContext* ctx, variable_list first, at::TensorList weights, at::TensorList defined_biases,
                  const std::vector<at::Tensor>& hidden, const at::Tensor& last,
                  const c10::List<c10::optional<at::Tensor>>& biases, const std::vector<std::string>& activations,
                  const variable_list& no_grad) {
  ctx->mark_non_differentiable(no_grad);
  ctx->set_materialize_grads(false);
  first.insert(first.end(), weights.begin(), weights.end());
  first.insert(first.end(), defined_biases.begin(), defined_biases.end());
  first.insert(first.end(), hidden.begin(), hidden.end());
  first.push_back(last);
  ctx->save_for_backward(first);
  NetworkEdges{weights.size(), split_biases(biases).second}.save(ctx);
  ctx->saved_data["activations"] = c10::List<std::string>(activations);
}

c10::List<bool> as_list(const std::vector<bool>& v) {
  c10::List<bool> out;
  for (bool b : v) out.push_back(b);
  return out;
}

variable_list slice(const variable_list& v, size_t begin, size_t count) {
  return variable_list(v.begin() + begin, v.begin() + begin + count);
}

struct MlpBackward : torch::autograd::Function<MlpBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                               at::TensorList defined_biases, const c10::List<c10::optional<at::Tensor>>& biases,
                               const std::vector<std::string>& activations, bool log) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [out, hidden] = FASTFFNN_OP(mlp).call(input, weights, biases, activations, log);
    save_network(ctx, {input}, weights, defined_biases, hidden, out, biases, activations, hidden);
    ctx->saved_data["log"] = log;
    variable_list result{out};
    result.insert(result.end(), hidden.begin(), hidden.end());
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const NetworkEdges edges = NetworkEdges::load(ctx);
    const size_t depth = edges.depth, nb = edges.bias_count();
    if (!grad_outputs[0].defined()) return variable_list(1 + depth + nb + 3);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const auto weights = slice(saved, 1, depth), defined_biases = slice(saved, 1 + depth, nb),
               hidden = slice(saved, 1 + depth + nb, depth - 1);
    const at::Tensor& out = saved.back();
    const auto activations = ctx->saved_data["activations"].to<std::vector<std::string>>();
    const bool log = ctx->saved_data["log"].toBool();
    const auto mask = edges.mask(ctx, false);
    if (at::GradMode::is_enabled()) {
      const auto acts = parse_activations(activations);
      const auto r = recompute(input, weights, edges.biases(defined_biases), acts);
      auto [gx, gw, gb] = network_grads_differentiable(softmax_backward(grad_outputs[0], r.logits, log), r, weights,
                                                       acts, mask);
      return edges.grads(gx, gw, gb, nullptr, mask, 3);
    }
    auto [gx, gw, gb] =
        FASTFFNN_OP(mlp_backward).call(grad_outputs[0], input, weights, hidden, out, activations, log, as_list(mask));
    return edges.grads(gx, gw, gb, nullptr, mask, 3);
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp(const at::Tensor& input, at::TensorList weights,
                                                    const c10::List<c10::optional<at::Tensor>>& biases,
                                                    c10::ArrayRef<std::string> activations, bool log) {
  if (!(records(input) || records_any(weights) || records_any(biases))) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(mlp).call(input, weights, biases, activations, log);
  }
  const std::vector<at::Tensor> defined_biases = split_biases(biases).first;
  // TensorLists, which the node counts as edges (a std::vector would not be).
  auto out = MlpBackward::apply(input, weights, at::TensorList(defined_biases), biases, activations.vec(), log);
  return {out[0], std::vector<at::Tensor>(out.begin() + 1, out.end())};
}

struct MlpNllBackward : torch::autograd::Function<MlpNllBackward> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input, at::TensorList weights,
                               at::TensorList defined_biases, const at::Tensor& target,
                               const c10::List<c10::optional<at::Tensor>>& biases,
                               const std::vector<std::string>& activations, c10::string_view reduction) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, hidden, log_probs] = FASTFFNN_OP(mlp_nll).call(input, weights, biases, target, activations, reduction);
    variable_list outputs_without_grad = hidden;
    outputs_without_grad.push_back(log_probs);
    save_network(ctx, {input, target}, weights, defined_biases, hidden, log_probs, biases, activations,
                 outputs_without_grad);
    ctx->saved_data["reduction"] = std::string(reduction);
    variable_list result{loss};
    result.insert(result.end(), hidden.begin(), hidden.end());
    result.push_back(log_probs);
    return result;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const NetworkEdges edges = NetworkEdges::load(ctx);
    const size_t depth = edges.depth, nb = edges.bias_count();
    if (!grad_outputs[0].defined()) return variable_list(1 + depth + nb + 1 + 3);
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &input = saved[0], &target = saved[1];
    const auto weights = slice(saved, 2, depth), defined_biases = slice(saved, 2 + depth, nb),
               hidden = slice(saved, 2 + depth + nb, depth - 1);
    const at::Tensor& log_probs = saved.back();
    const auto activations = ctx->saved_data["activations"].to<std::vector<std::string>>();
    const auto reduction = ctx->saved_data["reduction"].toStringRef();
    auto mask = edges.mask(ctx, true);
    mask.back() = mask.back() && target.is_floating_point();
    if (at::GradMode::is_enabled()) {
      const auto acts = parse_activations(activations);
      const auto r = recompute(input, weights, edges.biases(defined_biases), acts);
      at::Tensor gt = placeholder(input);
      const auto dz = nll_backward(grad_outputs[0], r.logits, target, parse_reduction(reduction),
                                   mask.back() ? &gt : nullptr);
      auto [gx, gw, gb] = network_grads_differentiable(dz, r, weights, acts, mask);
      return edges.grads(gx, gw, gb, &gt, mask, 3);
    }
    auto [gx, gw, gb, gt] = FASTFFNN_OP(mlp_nll_backward)
                                .call(grad_outputs[0], input, weights, hidden, log_probs, target, activations,
                                      reduction, as_list(mask));
    return edges.grads(gx, gw, gb, &gt, mask, 3);
  }
};

std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor> mlp_nll(
    const at::Tensor& input, at::TensorList weights, const c10::List<c10::optional<at::Tensor>>& biases,
    const at::Tensor& target, c10::ArrayRef<std::string> activations, c10::string_view reduction) {
  if (!(records(input, target) || records_any(weights) || records_any(biases))) {
    at::AutoDispatchBelowADInplaceOrView below;
    return FASTFFNN_OP(mlp_nll).call(input, weights, biases, target, activations, reduction);
  }
  const std::vector<at::Tensor> defined_biases = split_biases(biases).first;
  auto out = MlpNllBackward::apply(input, weights, at::TensorList(defined_biases), target, biases, activations.vec(),
                                   reduction);
  return {out[0], std::vector<at::Tensor>(out.begin() + 1, out.end() - 1), out.back()};
}

}  // namespace
}  // namespace autograd

TORCH_LIBRARY_IMPL(fastffnn, Autograd, m) {
  m.impl("linear_act", &autograd::linear_act);
  m.impl("linear_softmax", &autograd::linear_softmax);
  m.impl("softmax_nll", &autograd::softmax_nll);
  m.impl("ffnn", &autograd::ffnn);
  m.impl("ffnn_nll", &autograd::ffnn_nll);
  m.impl("mlp", &autograd::mlp);
  m.impl("mlp_nll", &autograd::mlp_nll);
}

static void register_differentiable(torch::Library& m) {
  m.impl("linear_act_backward_differentiable", &linear_act_backward_differentiable);
  m.impl("linear_softmax_backward_differentiable", &linear_softmax_backward_differentiable);
  m.impl("softmax_nll_backward_differentiable", &softmax_nll_backward_differentiable);
  m.impl("ffnn_backward_differentiable", &ffnn_backward_differentiable);
  m.impl("ffnn_nll_backward_differentiable", &ffnn_nll_backward_differentiable);
}

TORCH_LIBRARY_IMPL(fastffnn, CompositeImplicitAutograd, m) { register_differentiable(m); }
// vmap sits above the Autograd keys, so without this a vmapped call (jacrev's
// backward under vmap) would loop sample by sample through functorch's
// fallback instead of decomposing into the ATen ops' batching rules.
TORCH_LIBRARY_IMPL(fastffnn, FuncTorchBatchedDecomposition, m) { register_differentiable(m); }

}  // namespace fastffnn
