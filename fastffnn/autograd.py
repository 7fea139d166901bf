"""The fused ops as torch.autograd.Function subclasses: the Python-level layer of their autograd.

Every op's first-order autograd is registered in C++ (csrc/autograd.cpp), so
``torch.ops.fastffnn.<op>`` and the functions of :mod:`fastffnn.ops`
differentiate with one C++ node and no Python. These Functions carry what
that node does not, and :mod:`fastffnn.ops` routes a call through them when
a forward-mode dual level or a ``torch.func`` transform is active:

* **backward** (reverse mode): the op's native ``*_backward``, asked only for
  the gradients autograd needs (``ctx.needs_input_grad``). When the backward
  records a graph (``create_graph=True``, and always under ``torch.func``
  transforms, which may differentiate or vmap the gradient again) the
  gradients come from ``*_backward_differentiable``, the closed-form
  formulas composed of differentiable ATen ops, so higher derivatives,
  ``jacrev`` and ``hessian`` are exact.
* **jvp** (forward mode: ``torch.autograd.forward_ad``, ``torch.func.jvp``,
  ``jacfwd``): the formulas of :mod:`fastffnn._jvp`, from the saved inputs
  and outputs.
* **vmap** (``torch.func.vmap``): a batch of inputs folds into the ops'
  leading dims, which they take anyway, in one native call (a loss with a
  mean or sum is taken per example and reduced per vmapped sample); a vmapped
  weight or bias (an ensemble of networks) runs one call per sample.

They are public: call ``FFNN.apply(input, V_weight, V_bias, W_weight,
W_bias, activation, log)`` and friends with every argument positional, or
subclass them. Their forwards call the native op below the autograd key,
where the Function has already taken care of autograd, and ``apply`` skips
the per-call ``inspect.signature`` binding of ``torch.autograd.Function.apply``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import _jvp

_ops = torch.ops.fastffnn


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


def _vmapped_size(args, in_dims) -> int:
    for a, d in zip(args, in_dims):
        if d is not None:
            return a.shape[d]
    raise AssertionError("vmap rule called without a vmapped argument")


def _vmap_by_loop(fn_class, args, in_dims):
    """One call per vmapped sample, outputs stacked along dim 0: for vmapped weights or biases."""
    size = _vmapped_size(args, in_dims)
    outs = []
    for b in range(size):
        outs.append(fn_class.apply(*[a.select(d, b) if d is not None else a for a, d in zip(args, in_dims)]))
    if isinstance(outs[0], tuple):
        stacked = tuple(torch.stack(parts) for parts in zip(*outs))
        return stacked, (0,) * len(stacked)
    return torch.stack(outs), 0


def _vmap_rows(fn_class, args, in_dims, row_tensors: int):
    """vmap rule of an op whose outputs are row-wise in ``input`` (args[0]).

    A vmapped input alone folds into the op's leading dims: one native call.
    Anything else vmapped (weights, biases) runs sample by sample.
    """
    if all(d is None for d in in_dims[1:row_tensors]):
        x = args[0].movedim(in_dims[0], 0)
        out = fn_class.apply(x, *args[1:])
        return out, ((0,) * len(out) if isinstance(out, tuple) else 0)
    return _vmap_by_loop(fn_class, args, in_dims)


def _vmap_loss(fn_class, args, in_dims, input_index: int, target_index: int, reduction_index: int, weights: range):
    """vmap rule of a loss op (outputs: loss, then row-wise tensors).

    With only the input and the target vmapped, the samples fold into the
    leading dims and the loss is taken per row ('none'), then reduced within
    each sample as the reduction asks. Vmapped weights run sample by sample.
    """
    if any(in_dims[i] is not None for i in weights):
        return _vmap_by_loop(fn_class, args, in_dims)
    size = _vmapped_size(args, in_dims)
    args = list(args)
    x = args[input_index]
    x = x.movedim(in_dims[input_index], 0) if in_dims[input_index] is not None else x.expand(size, *x.shape)
    target = args[target_index]
    if in_dims[target_index] is not None:
        target = target.movedim(in_dims[target_index], 0)
    else:
        target = target.expand(size, *target.shape)
    reduction = args[reduction_index]
    args[input_index], args[target_index], args[reduction_index] = x, target, "none"
    loss, *rest = fn_class.apply(*args)
    if reduction != "none":
        flat = loss.reshape(size, -1)
        loss = flat.sum(1) if reduction == "sum" else flat.mean(1)
    return (loss, *rest), (0,) * (1 + len(rest))


def _layer_function(name: str, doc: str, epilogue_jvp: Callable) -> type:
    """The Function of a one-layer op ``y = f(input @ weight^T + bias)``, whose one option (the
    activation's name, or softmax's ``log`` flag) goes to the op, its backwards and
    ``epilogue_jvp(output, dz, option)``."""
    backward_name = name + "_backward"
    differentiable_name = name + "_backward_differentiable"

    class LayerFunction(_FusedFunction):
        @staticmethod
        def forward(input, weight, bias, option):
            return call_native(getattr(_ops, name).default, input, weight, bias, option)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, weight, bias, option = inputs
            ctx.save_for_backward(input, weight, bias, output)
            ctx.save_for_forward(input, weight, output)
            ctx.option = option

        @staticmethod
        def backward(ctx, grad_output):
            input, weight, bias, output = ctx.saved_tensors
            mask = list(ctx.needs_input_grad[:3])
            if torch.is_grad_enabled():  # the gradient records a graph: the differentiable formula
                grads = getattr(_ops, differentiable_name).default(grad_output, input, weight, bias, ctx.option, mask)
            else:
                grads = getattr(_ops, backward_name).default(grad_output, input, weight, output, ctx.option, mask)
            return (*_wanted(mask, *grads), None)

        @staticmethod
        def jvp(ctx, *tangents):
            input, weight, output = ctx.saved_tensors
            dz = _jvp.linear(input, weight, *tangents[:3])
            return epilogue_jvp(output, dz, ctx.option) if dz is not None else torch.zeros_like(output)

        @staticmethod
        def vmap(info, in_dims, *args):
            return _vmap_rows(LayerFunction, args, in_dims, 3)

    LayerFunction.__name__ = LayerFunction.__qualname__ = "".join(part.title() for part in name.split("_"))
    LayerFunction.__doc__ = doc
    return LayerFunction


LinearAct = _layer_function("linear_act", "h = act(input @ weight^T + bias): fastffnn::linear_act.",
                            _jvp.activation)
LinearSoftmax = _layer_function(
    "linear_softmax", "p = softmax(input @ weight^T + bias) (log_softmax if log): fastffnn::linear_softmax.",
    _jvp.softmax)


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
        ctx.save_for_forward(logits, target, lse)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_loss, _grad_lse):
        if grad_loss is None:
            return None, None, None
        logits, target, lse = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1] and target.is_floating_point()]
        if torch.is_grad_enabled():
            grads = _ops.softmax_nll_backward_differentiable.default(grad_loss, logits, target, ctx.reduction, mask)
        else:
            grads = _ops.softmax_nll_backward.default(grad_loss, logits, target, lse, ctx.reduction, mask)
        return (*_wanted(mask, *grads), None)

    @staticmethod
    def jvp(ctx, *tangents):
        logits, target, lse = ctx.saved_tensors
        dtarget = tangents[1] if target.is_floating_point() else None
        log_p = _jvp.log_probs_from_lse(logits, lse)
        return _jvp.nll(log_p, target, tangents[0], dtarget, ctx.reduction), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmap_loss(SoftmaxNLL, args, in_dims, 0, 1, 2, range(0))


class FFNN(_FusedFunction):
    """softmax(W(act(V(input)))): fastffnn::ffnn -> (output, hidden)."""

    @staticmethod
    def forward(input, V_weight, V_bias, W_weight, W_bias, activation, log):
        return call_native(_ops.ffnn.default, input, V_weight, V_bias, W_weight, W_bias, activation, log)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, V_weight, V_bias, W_weight, W_bias, activation, log = inputs
        out, hidden = output
        ctx.mark_non_differentiable(hidden)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, V_weight, V_bias, W_weight, W_bias, hidden, out)
        ctx.save_for_forward(input, V_weight, W_weight, hidden, out)
        ctx.activation = activation
        ctx.log = log

    @staticmethod
    def backward(ctx, grad_output, _grad_hidden):
        if grad_output is None:
            return (None,) * 7
        input, V_weight, V_bias, W_weight, W_bias, hidden, out = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:5])
        if torch.is_grad_enabled():
            grads = _ops.ffnn_backward_differentiable.default(grad_output, input, V_weight, V_bias, W_weight, W_bias,
                                                              ctx.activation, ctx.log, mask)
        else:
            grads = _ops.ffnn_backward.default(grad_output, input, V_weight, W_weight, hidden, out, ctx.activation,
                                               ctx.log, mask)
        return (*_wanted(mask, *grads), None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        input, V_weight, W_weight, hidden, out = ctx.saved_tensors
        dx, dVw, dVb, dWw, dWb = tangents[:5]
        dh = _jvp.activation(hidden, _jvp.linear(input, V_weight, dx, dVw, dVb), ctx.activation)
        dz = _jvp.linear(hidden, W_weight, dh, dWw, dWb)
        return (_jvp.softmax(out, dz, ctx.log) if dz is not None else torch.zeros_like(out)), None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmap_rows(FFNN, args, in_dims, 5)


class FFNNNLL(_FusedFunction):
    """The network's cross-entropy loss: fastffnn::ffnn_nll -> (loss, hidden, log_probs)."""

    @staticmethod
    def forward(input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction):
        return call_native(_ops.ffnn_nll.default, input, V_weight, V_bias, W_weight, W_bias, target, activation,
                           reduction)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, V_weight, V_bias, W_weight, W_bias, target, activation, reduction = inputs
        _loss, hidden, log_probs = output
        ctx.mark_non_differentiable(hidden, log_probs)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, V_weight, V_bias, W_weight, W_bias, hidden, log_probs, target)
        ctx.save_for_forward(input, V_weight, W_weight, hidden, log_probs, target)
        ctx.activation = activation
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_loss, _grad_hidden, _grad_log_probs):
        if grad_loss is None:
            return (None,) * 8
        input, V_weight, V_bias, W_weight, W_bias, hidden, log_probs, target = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:6])
        mask[5] = mask[5] and target.is_floating_point()
        if torch.is_grad_enabled():
            grads = _ops.ffnn_nll_backward_differentiable.default(grad_loss, input, V_weight, V_bias, W_weight,
                                                                  W_bias, target, ctx.activation, ctx.reduction, mask)
        else:
            grads = _ops.ffnn_nll_backward.default(grad_loss, input, V_weight, W_weight, hidden, log_probs, target,
                                                   ctx.activation, ctx.reduction, mask)
        return (*_wanted(mask, *grads), None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        input, V_weight, W_weight, hidden, log_probs, target = ctx.saved_tensors
        dx, dVw, dVb, dWw, dWb, dtarget = tangents[:6]
        dh = _jvp.activation(hidden, _jvp.linear(input, V_weight, dx, dVw, dVb), ctx.activation)
        dz = _jvp.linear(hidden, W_weight, dh, dWw, dWb)
        dtarget = dtarget if target.is_floating_point() else None
        return _jvp.nll(log_probs, target, dz, dtarget, ctx.reduction), None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return _vmap_loss(FFNNNLL, args, in_dims, 0, 5, 7, range(1, 5))


FUNCTIONS = {
    "linear_act": LinearAct,
    "linear_softmax": LinearSoftmax,
    "softmax_nll": SoftmaxNLL,
    "ffnn": FFNN,
    "ffnn_nll": FFNNNLL,
}
