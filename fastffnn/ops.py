"""The fused ops, as differentiable functions.

Each function has the name of the native op it runs (``torch.ops.fastffnn.<name>``)
and builds the extension on its first call. Shapes follow ``nn.Linear``:

* ``input`` is ``(..., in_features)``; a 1-D input is a single example, and
  any number of leading dims is allowed, including a batch of 0;
* ``weight``/``V_weight`` is ``(hidden, in_features)`` and ``W_weight`` is
  ``(classes, hidden)``; biases are ``(out_features,)`` or ``None``.

All tensors must share one device and one dtype: float32 or float64, and on
CUDA also float16 or bfloat16 (computed in float32); the integer class-index
target of the losses may be any integer dtype. Outputs have the operands'
dtype. Under autocast the operands are cast first (see :func:`_autocast`). Softmax is always taken
over the last dim. Inputs may be non-contiguous.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from . import autograd as _autograd
from ._runtime import ensure_loaded

_ops = torch.ops.fastffnn
# Checked inline by each wrapper, so that a call without autocast pays for no function call or tuple.
_autocast_on = torch._C._is_any_autocast_enabled


def _bad_arguments(op: str, *named: tuple[str, object, type | tuple[type, ...]]) -> None:
    """Raises TypeError for the first argument that is not of its type (the wrappers' slow path)."""
    for name, value, kind in named:
        if not isinstance(value, kind):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            wanted = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise TypeError(f"fastffnn.{op}: {name} must be {wanted}, got {type(value).__name__}")


_MAYBE_TENSOR = (Tensor, type(None))


def _python_route() -> bool:
    """Whether this call goes through the Python autograd.Function (fastffnn.autograd) instead of the op.

    The op differentiates in C++ (first order, and exactly at any order
    through ``create_graph``); only the Functions carry forward-mode AD and
    vmap rules. So they take the call inside a forward-AD dual level (dual
    tensors need not require grad) and under ``torch.func`` transforms; every
    other call, with or without autograd recording, is one op call. Under
    torch.compile the op is traced as it is.
    """
    return ((_forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active())
            and not torch.compiler.is_compiling())


def _autocast(*tensors: Tensor | None) -> tuple:
    """The operands as the fused ops take them under autocast (the wrappers call it only while it is on).

    On CUDA, floating operands other than float64 are cast to the autocast
    dtype (float16 or bfloat16), as autocast casts ``nn.Linear``'s; the
    kernels accumulate in float32 and return that dtype. On the CPU, whose
    kernels are float32/float64, float16/bfloat16 operands are cast to
    float32, and the result is float32. The casts are recorded by autograd,
    so gradients reach each operand in its own dtype.
    """
    out = []
    for t in tensors:
        if t is not None and t.is_floating_point() and t.dtype != torch.float64:
            kind = t.device.type
            if kind == "cuda" and torch.is_autocast_enabled("cuda"):
                t = t.to(torch.get_autocast_dtype("cuda"))
            elif kind == "cpu" and torch.is_autocast_enabled("cpu") and t.dtype != torch.float32:
                t = t.float()
        out.append(t)
    return tuple(out)


def linear_act(input: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "tanh") -> Tensor:
    """``activation(input @ weight.T + bias)`` in one fused pass.

    Args:
        input: ``(..., in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or None.
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"``.

    Returns:
        ``(..., out_features)``, the dtype of ``input``.
    """
    if not (isinstance(input, Tensor) and isinstance(weight, Tensor) and isinstance(bias, _MAYBE_TENSOR)
            and isinstance(activation, str)):
        _bad_arguments("linear_act", ("input", input, Tensor), ("weight", weight, Tensor),
                       ("bias", bias, _MAYBE_TENSOR), ("activation", activation, str))
    ensure_loaded()
    if _autocast_on():
        input, weight, bias = _autocast(input, weight, bias)
    if _python_route():
        return _autograd.LinearAct.apply(input, weight, bias, activation)
    return _ops.linear_act.default(input, weight, bias, activation)


def linear_softmax(input: Tensor, weight: Tensor, bias: Tensor | None = None, log: bool = False) -> Tensor:
    """``softmax(input @ weight.T + bias, dim=-1)``, or ``log_softmax`` if ``log``.

    Args:
        input: ``(..., in_features)``.
        weight: ``(classes, in_features)``.
        bias: ``(classes,)`` or None.
        log: return log-probabilities, computed as ``z - logsumexp(z)``.

    Returns:
        ``(..., classes)`` in ``input``'s dtype, each row summing to 1 (or its
        exp, if ``log``).
    """
    if not (isinstance(input, Tensor) and isinstance(weight, Tensor) and isinstance(bias, _MAYBE_TENSOR)
            and isinstance(log, bool)):
        _bad_arguments("linear_softmax", ("input", input, Tensor), ("weight", weight, Tensor),
                       ("bias", bias, _MAYBE_TENSOR), ("log", log, bool))
    ensure_loaded()
    if _autocast_on():
        input, weight, bias = _autocast(input, weight, bias)
    if _python_route():
        return _autograd.LinearSoftmax.apply(input, weight, bias, log)
    return _ops.linear_softmax.default(input, weight, bias, log)


def softmax_nll(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy ``-sum(target * log_softmax(logits))``, as ``F.cross_entropy``.

    Args:
        logits: ``(..., classes)``; a 1-D tensor is one example.
        target: class indices, an integer tensor of shape ``(...)`` (a 0-d
            tensor for 1-D logits); or probabilities (for example the
            lecture's one-hot gold label), a floating tensor of the logits'
            shape and dtype.
        reduction: ``"mean"`` (over the examples), ``"sum"`` or ``"none"``.

    Returns:
        A 0-d tensor, or the per-example losses ``(...)`` for ``"none"``, in
        ``logits``' dtype.
        The gradient with respect to the logits is ``softmax(logits) - target``
        (scaled by the reduction); probability targets get a gradient too.
    """
    if not (isinstance(logits, Tensor) and isinstance(target, Tensor) and isinstance(reduction, str)):
        _bad_arguments("softmax_nll", ("logits", logits, Tensor), ("target", target, Tensor),
                       ("reduction", reduction, str))
    ensure_loaded()
    if _autocast_on():
        logits, target = _autocast(logits, target)
    if _python_route():
        return _autograd.SoftmaxNLL.apply(logits, target, reduction)[0]
    return _ops.softmax_nll.default(logits, target, reduction)[0]


def ffnn(
    input: Tensor,
    V_weight: Tensor,
    V_bias: Tensor | None,
    W_weight: Tensor,
    W_bias: Tensor | None,
    activation: str = "tanh",
    log: bool = False,
) -> Tensor:
    """The lecture's network ``softmax(W(g(V(input))))`` in one native call each way.

    Args:
        input: ``(..., in_features)``.
        V_weight: ``(hidden, in_features)``; V_bias: ``(hidden,)`` or None.
        W_weight: ``(classes, hidden)``; W_bias: ``(classes,)`` or None.
        activation: ``g``: ``"tanh"``, ``"relu"`` or ``"sigmoid"``.
        log: return log-probabilities instead.

    Returns:
        ``(..., classes)`` probabilities (log-probabilities if ``log``) in
        ``input``'s dtype.
    """
    if not (isinstance(input, Tensor) and isinstance(V_weight, Tensor) and isinstance(V_bias, _MAYBE_TENSOR)
            and isinstance(W_weight, Tensor) and isinstance(W_bias, _MAYBE_TENSOR) and isinstance(activation, str)
            and isinstance(log, bool)):
        _bad_arguments("ffnn", ("input", input, Tensor), ("V_weight", V_weight, Tensor),
                       ("V_bias", V_bias, _MAYBE_TENSOR), ("W_weight", W_weight, Tensor),
                       ("W_bias", W_bias, _MAYBE_TENSOR), ("activation", activation, str), ("log", log, bool))
    ensure_loaded()
    if _autocast_on():
        input, V_weight, V_bias, W_weight, W_bias = _autocast(input, V_weight, V_bias, W_weight, W_bias)
    if _python_route():
        return _autograd.FFNN.apply(input, V_weight, V_bias, W_weight, W_bias, activation, log)[0]
    return _ops.ffnn.default(input, V_weight, V_bias, W_weight, W_bias, activation, log)[0]


def ffnn_nll(
    input: Tensor,
    V_weight: Tensor,
    V_bias: Tensor | None,
    W_weight: Tensor,
    W_bias: Tensor | None,
    target: Tensor,
    activation: str = "tanh",
    reduction: str = "mean",
) -> Tensor:
    """The network's cross-entropy loss ``softmax_nll(W(g(V(input))), target)`` in one native call each way.

    Takes the arguments of :func:`ffnn` and the ``target`` and ``reduction``
    of :func:`softmax_nll`; returns what :func:`softmax_nll` returns.
    """
    if not (isinstance(input, Tensor) and isinstance(V_weight, Tensor) and isinstance(V_bias, _MAYBE_TENSOR)
            and isinstance(W_weight, Tensor) and isinstance(W_bias, _MAYBE_TENSOR) and isinstance(target, Tensor)
            and isinstance(activation, str) and isinstance(reduction, str)):
        _bad_arguments("ffnn_nll", ("input", input, Tensor), ("V_weight", V_weight, Tensor),
                       ("V_bias", V_bias, _MAYBE_TENSOR), ("W_weight", W_weight, Tensor),
                       ("W_bias", W_bias, _MAYBE_TENSOR), ("target", target, Tensor),
                       ("activation", activation, str), ("reduction", reduction, str))
    ensure_loaded()
    if _autocast_on():
        input, V_weight, V_bias, W_weight, W_bias, target = _autocast(input, V_weight, V_bias, W_weight, W_bias,
                                                                      target)
    if _python_route():
        return _autograd.FFNNNLL.apply(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction)[0]
    return _ops.ffnn_nll.default(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction)[0]


def _check_layers(op: str, weights, biases, activations) -> None:
    """TypeErrors for lists of the wrong kind (the native checks do the sizes, dtypes and devices)."""
    for name, values, kind in (("weights", weights, Tensor), ("biases", biases, _MAYBE_TENSOR),
                               ("activations", activations, str)):
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"fastffnn.{op}: {name} must be a list, got {type(values).__name__}")
        for i, v in enumerate(values):
            if not isinstance(v, kind):
                wanted = "Tensor or None" if kind is _MAYBE_TENSOR else kind.__name__
                raise TypeError(f"fastffnn.{op}: {name}[{i}] must be {wanted}, got {type(v).__name__}")


def _composed_logits(input, weights, biases, activations):
    """The hidden layers through linear_act, for the transforms' route: the same arithmetic, and the layer
    Functions carry the jvp and vmap rules."""
    for w, b, act in zip(weights[:-1], biases[:-1], activations):
        input = _autograd.LinearAct.apply(input, w, b, act)
    return input


def mlp(input: Tensor, weights, biases, activations, log: bool = False) -> Tensor:
    """A network of any depth ``softmax(L_L(g_{L-1}(... g_1(L_1(input)))))`` in one native call each way.

    Args:
        input: ``(..., n_0)``.
        weights: ``L >= 1`` tensors, ``weights[k]`` of shape ``(n_{k+1}, n_k)`` as in ``nn.Linear``.
        biases: ``L`` entries, ``biases[k]`` of shape ``(n_{k+1},)`` or None.
        activations: ``L - 1`` names, one per hidden layer: ``"tanh"``, ``"relu"`` or ``"sigmoid"``.
        log: return log-probabilities instead.

    Returns:
        ``(..., n_L)`` probabilities (log-probabilities if ``log``) in ``input``'s dtype.
        With one hidden layer this is :func:`ffnn`.
    """
    if not (isinstance(input, Tensor) and isinstance(log, bool)):
        _bad_arguments("mlp", ("input", input, Tensor), ("log", log, bool))
    _check_layers("mlp", weights, biases, activations)
    return _mlp(input, list(weights), list(biases), list(activations), log)


def _mlp(input: Tensor, weights: list, biases: list, activations: list, log: bool) -> Tensor:
    """:func:`mlp` for arguments known to be of the right types (FastMLP's own)."""
    ensure_loaded()
    if _autocast_on():
        input, *rest = _autocast(input, *weights, *biases)
        weights, biases = list(rest[:len(weights)]), list(rest[len(weights):])
    if _python_route():
        _ops._check_mlp(input, weights, biases, activations)
        hidden = _composed_logits(input, weights, biases, activations)
        return _autograd.LinearSoftmax.apply(hidden, weights[-1], biases[-1], log)
    return _ops.mlp.default(input, weights, biases, activations, log)[0]


def mlp_nll(input: Tensor, weights, biases, target: Tensor, activations, reduction: str = "mean") -> Tensor:
    """The cross-entropy of :func:`mlp`'s prediction against ``target``, in one native call each way.

    Takes the arguments of :func:`mlp` and the ``target`` and ``reduction``
    of :func:`softmax_nll`; returns what :func:`softmax_nll` returns.
    """
    if not (isinstance(input, Tensor) and isinstance(target, Tensor) and isinstance(reduction, str)):
        _bad_arguments("mlp_nll", ("input", input, Tensor), ("target", target, Tensor),
                       ("reduction", reduction, str))
    _check_layers("mlp_nll", weights, biases, activations)
    return _mlp_nll(input, list(weights), list(biases), target, list(activations), reduction)


def _mlp_nll(input: Tensor, weights: list, biases: list, target: Tensor, activations: list, reduction: str) -> Tensor:
    """:func:`mlp_nll` for arguments known to be of the right types (FastMLP's own, but for the target)."""
    ensure_loaded()
    if _autocast_on():
        input, target, *rest = _autocast(input, target, *weights, *biases)
        weights, biases = list(rest[:len(weights)]), list(rest[len(weights):])
    if _python_route():
        _ops._check_mlp_nll(input, weights, biases, target, activations, reduction)
        hidden = _composed_logits(input, weights, biases, activations)
        logits = torch.nn.functional.linear(hidden, weights[-1], biases[-1])
        return _autograd.SoftmaxNLL.apply(logits, target, reduction)[0]
    return _ops.mlp_nll.default(input, weights, biases, target, activations, reduction)[0]
