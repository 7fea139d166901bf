"""Autograd for the fused ops: one torch.autograd.Function per forward op.

Each Function's forward is the native op, and its backward is the op's native
``*_backward``, asked only for the gradients autograd needs
(``ctx.needs_input_grad``). :func:`register` also attaches the same
``setup_context``/``backward`` pair to the dispatcher op itself
(``torch.library.register_autograd``), so ``torch.ops.fastffnn.*`` called
directly differentiates the same way.

Per-call overhead matters here (at batch 1 the kernels take microseconds), so
the forwards call the native op below the autograd dispatch key, where the
Function has already taken care of autograd, and ``apply`` skips the
per-call ``inspect.signature`` binding of ``torch.autograd.Function.apply``.

The backward ops are not themselves differentiable yet, so the backwards are
:func:`first_order_only`: asking for a second derivative raises an error
instead of returning a wrong one.
"""

from __future__ import annotations

import functools

import torch

_ops = torch.ops.fastffnn


def first_order_only(backward):
    """Runs a backward without recording it, and makes any attempt to differentiate its result fail loudly.

    Like ``torch.autograd.function.once_differentiable``, but it also looks at
    the saved tensors: under ``create_graph=True`` the incoming gradient
    usually does not require grad while the saved weights do, and
    once_differentiable would then return gradients with no history, so a
    gradient penalty built on them would silently lose its second-order
    terms.
    """

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        with torch.no_grad():
            outputs = backward(ctx, *grads)
        if not torch.is_grad_enabled():
            return outputs
        sources = (*grads, *ctx.saved_tensors)
        if not any(isinstance(t, torch.Tensor) and t.requires_grad for t in sources):
            return outputs
        err = torch._C._functions.DelayedError(
            b"fastffnn: second derivatives (double backward) of the fused ops are not supported yet", len(outputs)
        )
        marked = [None if t is None else t.detach().requires_grad_(True) for t in outputs]
        return err(*marked)

    return wrapper


def call_native(op, *args):
    """Calls a native op below the autograd key: for callers that have handled autograd themselves."""
    if torch.compiler.is_compiling():
        return op(*args)  # traced: the dispatcher keys are the compiler's business
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


class _FusedFunction(torch.autograd.Function):
    @classmethod
    def apply(cls, *args):
        # torch.autograd.Function.apply binds the arguments to forward's
        # signature with inspect on every call, which costs more than a
        # batch-1 kernel; every caller here passes all arguments positionally.
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        args = torch._functorch.utils.unwrap_dead_wrappers(args)
        return super(torch.autograd.Function, cls).apply(*args)


def _wanted(mask, *grads):
    """The gradients autograd asked for; None for the rest."""
    return tuple(g if want else None for want, g in zip(mask, grads))


class LinearAct(_FusedFunction):
    """h = act(input @ weight^T + bias): fastffnn::linear_act."""

    @staticmethod
    def forward(input, weight, bias, activation):
        return call_native(_ops.linear_act.default, input, weight, bias, activation)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _bias, activation = inputs
        ctx.save_for_backward(input, weight, output)
        ctx.activation = activation

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        mask = ctx.needs_input_grad[:3]
        grads = _ops.linear_act_backward.default(grad_output, input, weight, output, ctx.activation, list(mask))
        return (*_wanted(mask, *grads), None)


class LinearSoftmax(_FusedFunction):
    """p = softmax(input @ weight^T + bias) (log_softmax if log): fastffnn::linear_softmax."""

    @staticmethod
    def forward(input, weight, bias, log):
        return call_native(_ops.linear_softmax.default, input, weight, bias, log)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, _bias, log = inputs
        ctx.save_for_backward(input, weight, output)
        ctx.log = log

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output):
        input, weight, output = ctx.saved_tensors
        mask = ctx.needs_input_grad[:3]
        grads = _ops.linear_softmax_backward.default(grad_output, input, weight, output, ctx.log, list(mask))
        return (*_wanted(mask, *grads), None)


class SoftmaxNLL(_FusedFunction):
    """Cross-entropy of softmax(logits) against target: fastffnn::softmax_nll -> (loss, lse)."""

    @staticmethod
    def forward(logits, target, reduction):
        return call_native(_ops.softmax_nll.default, logits, target, reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, reduction = inputs
        _loss, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, target, lse)
        ctx.reduction = reduction

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss, _grad_lse):
        if grad_loss is None:
            return None, None, None
        logits, target, lse = ctx.saved_tensors
        mask = ctx.needs_input_grad[:2]
        grads = _ops.softmax_nll_backward.default(grad_loss, logits, target, lse, ctx.reduction, list(mask))
        return (*_wanted(mask, *grads), None)


class FFNN(_FusedFunction):
    """softmax(W(act(V(input)))): fastffnn::ffnn -> (output, hidden)."""

    @staticmethod
    def forward(input, V_weight, V_bias, W_weight, W_bias, activation, log):
        return call_native(_ops.ffnn.default, input, V_weight, V_bias, W_weight, W_bias, activation, log)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, V_weight, _V_bias, W_weight, _W_bias, activation, log = inputs
        out, hidden = output
        ctx.mark_non_differentiable(hidden)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, V_weight, W_weight, hidden, out)
        ctx.activation = activation
        ctx.log = log

    @staticmethod
    @first_order_only
    def backward(ctx, grad_output, _grad_hidden):
        if grad_output is None:
            return (None,) * 7
        input, V_weight, W_weight, hidden, out = ctx.saved_tensors
        mask = ctx.needs_input_grad[:5]
        grads = _ops.ffnn_backward.default(grad_output, input, V_weight, W_weight, hidden, out, ctx.activation, ctx.log,
                                   list(mask))
        return (*_wanted(mask, *grads), None, None)


class FFNNNLL(_FusedFunction):
    """The network's cross-entropy loss: fastffnn::ffnn_nll -> (loss, hidden, log_probs)."""

    @staticmethod
    def forward(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction):
        return call_native(_ops.ffnn_nll.default, input, V_weight, V_bias, W_weight, W_bias, target, activation,
                           reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, V_weight, _V_bias, W_weight, _W_bias, target, activation, reduction = inputs
        _loss, hidden, log_probs = output
        ctx.mark_non_differentiable(hidden, log_probs)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, V_weight, W_weight, hidden, log_probs, target)
        ctx.activation = activation
        ctx.reduction = reduction

    @staticmethod
    @first_order_only
    def backward(ctx, grad_loss, _grad_hidden, _grad_log_probs):
        if grad_loss is None:
            return (None,) * 8
        input, V_weight, W_weight, hidden, log_probs, target = ctx.saved_tensors
        mask = ctx.needs_input_grad[:6]
        grads = _ops.ffnn_nll_backward.default(grad_loss, input, V_weight, W_weight, hidden, log_probs, target,
                                       ctx.activation, ctx.reduction, list(mask))
        return (*_wanted(mask, *grads), None, None)


FUNCTIONS = {
    "linear_act": LinearAct,
    "linear_softmax": LinearSoftmax,
    "softmax_nll": SoftmaxNLL,
    "ffnn": FFNN,
    "ffnn_nll": FFNNNLL,
}


def register() -> None:
    """Makes each forward op differentiable at the dispatcher, with its Function's formula."""
    for name, fn in FUNCTIONS.items():
        torch.library.register_autograd(f"fastffnn::{name}", fn.backward, setup_context=fn.setup_context)
