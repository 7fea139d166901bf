"""The fused ops, as differentiable functions.

Each function has the name of the native op it runs (``torch.ops.fastffnn.<name>``)
and builds the extension on its first call. Shapes follow ``nn.Linear``:

* ``input`` is ``(..., in_features)``; a 1-D input is a single example, and
  any number of leading dims is allowed, including a batch of 0;
* ``weight``/``V_weight`` is ``(hidden, in_features)`` and ``W_weight`` is
  ``(classes, hidden)``; biases are ``(out_features,)`` or ``None``.

All tensors must share one device and one dtype, float32 or float64 (the
integer class-index target of the losses excepted). Softmax is always taken
over the last dim. Inputs may be non-contiguous.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import autograd as _autograd
from ._build import ensure_loaded
from .autograd import call_native

_ops = torch.ops.fastffnn


def _needs_grad(*tensors: Tensor | None) -> bool:
    # Without a gradient to record, skip the autograd.Function and its
    # per-call cost, and run the native op directly.
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    ensure_loaded()
    if not _needs_grad(input, weight, bias):
        return call_native(_ops.linear_act.default, input, weight, bias, activation)
    return _autograd.LinearAct.apply(input, weight, bias, activation)


def linear_softmax(input: Tensor, weight: Tensor, bias: Tensor | None = None, log: bool = False) -> Tensor:
    """``softmax(input @ weight.T + bias, dim=-1)``, or ``log_softmax`` if ``log``.

    Args:
        input: ``(..., in_features)``.
        weight: ``(classes, in_features)``.
        bias: ``(classes,)`` or None.
        log: return log-probabilities, computed as ``z - logsumexp(z)``.

    Returns:
        ``(..., classes)``, each row summing to 1 (or its exp, if ``log``).
    """
    ensure_loaded()
    if not _needs_grad(input, weight, bias):
        return call_native(_ops.linear_softmax.default, input, weight, bias, log)
    return _autograd.LinearSoftmax.apply(input, weight, bias, log)


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
        A scalar, or the per-example losses ``(...)`` for ``"none"``.
        The gradient with respect to the logits is ``softmax(logits) - target``
        (scaled by the reduction); probability targets get a gradient too.
    """
    ensure_loaded()
    if not _needs_grad(logits, target):
        return call_native(_ops.softmax_nll.default, logits, target, reduction)[0]
    loss, _lse = _autograd.SoftmaxNLL.apply(logits, target, reduction)
    return loss


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
        ``(..., classes)`` probabilities (log-probabilities if ``log``).
    """
    ensure_loaded()
    args = (input, V_weight, V_bias, W_weight, W_bias, activation, log)
    if not _needs_grad(input, V_weight, V_bias, W_weight, W_bias):
        return call_native(_ops.ffnn.default, *args)[0]
    out, _hidden = _autograd.FFNN.apply(*args)
    return out


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
    ensure_loaded()
    args = (input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction)
    if not _needs_grad(input, V_weight, V_bias, W_weight, W_bias, target):
        return call_native(_ops.ffnn_nll.default, *args)[0]
    loss, _hidden, _log_probs = _autograd.FFNNNLL.apply(*args)
    return loss
