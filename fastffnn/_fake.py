"""Fake (meta) kernels of the fastffnn ops, for torch.compile and FakeTensor.

Each one produces outputs with the real kernel's shapes, dtypes and devices
without computing anything. They repeat the real kernels' argument checks that
depend only on metadata (shapes, dtypes, devices; csrc/checks.cpp) word for
word, so that a traced program fails with the same error as an eager one;
tests/test_errors.py::test_eager_and_fake_give_the_same_error holds the two
to that. (They are Python rather than C++ Meta kernels because a Meta kernel
sees every FakeTensor as a meta tensor, so it could check neither devices nor
the CUDA-only float16/bfloat16.)
"""

from __future__ import annotations

import torch
from torch import Tensor

_FLOATING = (torch.float32, torch.float64)
# c10's names for the dtypes, as the C++ checks print them
_C10_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half", torch.bfloat16: "BFloat16",
    torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
    torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def _name(dtype: torch.dtype) -> str:
    return _C10_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _sizes(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


_ACTIVATIONS = ("tanh", "relu", "sigmoid")


def _check_activation(name: str) -> None:
    if name not in _ACTIVATIONS:
        raise ValueError(f"fastffnn: activation must be one of 'tanh', 'relu', 'sigmoid', got '{name}'")


def _check_like(op: str, name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"fastffnn.{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"fastffnn.{op}: {name} is {_name(t.dtype)} but {ref_name} is {_name(ref.dtype)}; "
                        "use one dtype for all of them")


def _check_layer(op: str, in_name: str, ref: Tensor, in_features: int, weight_name: str, weight: Tensor,
                 bias_name: str, bias: Tensor | None) -> int:
    _check_like(op, weight_name, weight, "input", ref)
    if weight.dim() != 2:
        raise ValueError(f"fastffnn.{op}: {weight_name} must be 2-D (out_features, in_features), got shape {list(weight.shape)}")
    if weight.shape[1] != in_features:
        raise ValueError(
            f"fastffnn.{op}: {in_name} has {in_features} features but {weight_name} of shape "
            f"{list(weight.shape)} expects {weight.shape[1]}"
        )
    out = weight.shape[0]
    if bias is not None:
        _check_like(op, bias_name, bias, "input", ref)
        if bias.dim() != 1 or bias.shape[0] != out:
            raise ValueError(f"fastffnn.{op}: {bias_name} must have shape [{out}] to match {weight_name} of shape "
                             f"{_sizes(weight.shape)}, got {_sizes(bias.shape)}")
    return out


def _check_input(op: str, name: str, input: Tensor) -> None:
    reduced = input.dtype in (torch.float16, torch.bfloat16) and input.device.type == "cuda"
    if input.dtype not in _FLOATING and not reduced:
        hint = " (convert it with .float())" if input.dtype in (torch.float16, torch.bfloat16) else ""
        raise TypeError(
            f"fastffnn.{op}: {name} must be float32 or float64 (or float16/bfloat16 on CUDA), got "
            f"{_name(input.dtype)} on {input.device}{hint}"
        )
    if input.dim() < 1:
        raise ValueError(f"fastffnn.{op}: {name} must have at least 1 dimension (..., in_features), got a 0-d tensor")


def _network(op: str, input: Tensor, V_weight: Tensor, V_bias: Tensor | None, W_weight: Tensor,
             W_bias: Tensor | None) -> tuple[int, int]:
    _check_input(op, "input", input)
    hidden = _check_layer(op, "input", input, input.shape[-1], "V_weight", V_weight, "V_bias", V_bias)
    out = _check_layer(op, "the hidden layer", input, hidden, "W_weight", W_weight, "W_bias", W_bias)
    return hidden, out


def _check_target(op: str, logits_shape: tuple, ref: Tensor, target: Tensor) -> bool:
    if target.device != ref.device:
        raise ValueError(f"fastffnn.{op}: target is on {target.device} but the logits are on {ref.device}")
    if not target.is_floating_point() and not target.is_complex() and target.dtype != torch.bool:
        if tuple(target.shape) != tuple(logits_shape[:-1]):
            raise ValueError(f"fastffnn.{op}: a class-index target must have shape {_sizes(logits_shape[:-1])} "
                             f"(the logits' shape {_sizes(logits_shape)} without the class dim), got "
                             f"{_sizes(target.shape)}")
        return True
    if not target.is_floating_point():
        raise TypeError(f"fastffnn.{op}: target must hold class indices (an integer tensor) or probabilities (a "
                        f"floating tensor), got {_name(target.dtype)}")
    if target.dtype != ref.dtype:
        raise TypeError(f"fastffnn.{op}: a probability target must have the logits' dtype {_name(ref.dtype)}, got "
                        f"{_name(target.dtype)}")
    if tuple(target.shape) != tuple(logits_shape):
        raise ValueError(f"fastffnn.{op}: a probability target must have the logits' shape {_sizes(logits_shape)}, "
                         f"got {_sizes(target.shape)}")
    return False


def _loss_shape(lead: tuple, reduction: str) -> tuple:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"fastffnn: reduction must be one of 'mean', 'sum', 'none', got '{reduction}'")
    return lead if reduction == "none" else ()


def _grad_placeholders(like: Tensor, mask, shapes) -> list[Tensor]:
    return [like.new_empty(shape) if wanted else like.new_empty(0) for wanted, shape in zip(mask, shapes)]


def register() -> None:
    """Registers every fake kernel; called once the native library is loaded."""
    lib = "fastffnn::"

    @torch.library.register_fake(lib + "linear_act")
    def _(input, weight, bias=None, activation="tanh"):
        _check_activation(activation)
        _check_input("linear_act", "input", input)
        out = _check_layer("linear_act", "input", input, input.shape[-1], "weight", weight, "bias", bias)
        return input.new_empty((*input.shape[:-1], out))

    @torch.library.register_fake(lib + "linear_softmax")
    def _(input, weight, bias=None, log=False):
        _check_input("linear_softmax", "input", input)
        out = _check_layer("linear_softmax", "input", input, input.shape[-1], "weight", weight, "bias", bias)
        return input.new_empty((*input.shape[:-1], out))

    def _layer_backward(grad_output, input, weight, output, output_mask):
        return _grad_placeholders(input, output_mask, (input.shape, weight.shape, (weight.shape[0],)))

    torch.library.register_fake(lib + "linear_act_backward")(
        lambda grad_output, input, weight, output, activation, output_mask: _layer_backward(
            grad_output, input, weight, output, output_mask))
    torch.library.register_fake(lib + "linear_softmax_backward")(
        lambda grad_output, input, weight, output, log, output_mask: _layer_backward(
            grad_output, input, weight, output, output_mask))

    @torch.library.register_fake(lib + "softmax_nll")
    def _(logits, target, reduction="mean"):
        _loss_shape((), reduction)
        _check_input("softmax_nll", "logits", logits)
        if logits.shape[-1] < 1:
            raise ValueError("fastffnn.softmax_nll: logits must have shape (..., classes) with at least one class, "
                             f"got {_sizes(logits.shape)}")
        _check_target("softmax_nll", tuple(logits.shape), logits, target)
        lead = tuple(logits.shape[:-1])
        # the log-sum-exp is kept in the compute type: float32 for float16/bfloat16
        lse_dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
        return logits.new_empty(_loss_shape(lead, reduction)), logits.new_empty(lead, dtype=lse_dtype)

    @torch.library.register_fake(lib + "softmax_nll_backward")
    def _(grad_loss, logits, target, lse, reduction, output_mask):
        mask = (output_mask[0], output_mask[1] and target.is_floating_point())
        return _grad_placeholders(logits, mask, (logits.shape, logits.shape))

    @torch.library.register_fake(lib + "ffnn")
    def _(input, V_weight, V_bias, W_weight, W_bias, activation="tanh", log=False):
        _check_activation(activation)
        hidden, out = _network("ffnn", input, V_weight, V_bias, W_weight, W_bias)
        lead = tuple(input.shape[:-1])
        return input.new_empty((*lead, out)), input.new_empty((*lead, hidden))

    @torch.library.register_fake(lib + "ffnn_backward")
    def _(grad_output, input, V_weight, W_weight, hidden, output, activation, log, output_mask):
        shapes = (input.shape, V_weight.shape, (V_weight.shape[0],), W_weight.shape, (W_weight.shape[0],))
        return _grad_placeholders(input, output_mask, shapes)

    @torch.library.register_fake(lib + "ffnn_nll")
    def _(input, V_weight, V_bias, W_weight, W_bias, target, activation="tanh", reduction="mean"):
        _check_activation(activation)
        _loss_shape((), reduction)
        hidden, out = _network("ffnn_nll", input, V_weight, V_bias, W_weight, W_bias)
        if out < 1:
            raise ValueError("fastffnn.ffnn_nll: the network needs at least one class, got W_weight of shape "
                             f"{_sizes(W_weight.shape)}")
        lead = tuple(input.shape[:-1])
        _check_target("ffnn_nll", (*lead, out), input, target)
        return (input.new_empty(_loss_shape(lead, reduction)), input.new_empty((*lead, hidden)),
                input.new_empty((*lead, out)))

    @torch.library.register_fake(lib + "ffnn_nll_backward")
    def _(grad_loss, input, V_weight, W_weight, hidden, log_probs, target, activation, reduction, output_mask):
        shapes = (input.shape, V_weight.shape, (V_weight.shape[0],), W_weight.shape, (W_weight.shape[0],),
                  log_probs.shape)
        mask = list(output_mask)
        mask[5] = mask[5] and target.is_floating_point()
        return _grad_placeholders(input, mask, shapes)

    @torch.library.register_fake(lib + "adam_step_")
    def _(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr, beta1, beta2, eps, weight_decay,
          amsgrad, maximize, decoupled_weight_decay):
        return None

    @torch.library.register_fake(lib + "ffnn_nll_adam_step_")
    def _(input, target, params, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, activation, reduction,
          lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay):
        if reduction == "none":
            raise ValueError("fastffnn.ffnn_nll_adam_step_: reduction must be 'mean' or 'sum'")
        return input.new_empty(())
