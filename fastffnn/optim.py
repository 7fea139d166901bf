"""Fused optimizers: ``torch.optim.Adam``'s and ``torch.optim.SGD``'s updates, for every parameter in one native call.

``fastffnn.optim.Adam`` and ``fastffnn.optim.SGD`` take their torch
counterparts' arguments and keep the same per-parameter state (Adam:
``step``, ``exp_avg``, ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``;
SGD: ``momentum_buffer``, with a momentum) and param-group keys, so their
``state_dict`` loads into torch's optimizers and the reverse. Both have
``train_step`` (a whole training step of a FastFFNN or FastMLP in one native
call), and :func:`fit` drives either over whole epochs. On CUDA, ``step()``
is one launch per 24 parameters of one dtype, and ``train_step`` is one native
call too: the fused forward, its backward and that launch, with no autograd
in between (under CUDA autocast it takes the autograd route). Adam's step
counters stay on the CPU, so its steps cannot be captured in a CUDA graph,
unless ``Adam(capturable=True)`` keeps them on the parameters' device, as
torch.optim.Adam's does: one launch more advances them, and a capture may
then hold ``step()`` and ``train_step``. SGD's may be captured once its
momentum buffers exist (with a momentum, after the first step, which sets
them to the gradients).
``fit`` cannot be (it reads the device). ``train_step`` on CUDA captures a
step repeated unchanged into a CUDA graph of its own and replays it, for
either optimizer and either kind of counter (``fastffnn/_graphs.py``;
``FASTFFNN_CUDA_GRAPHS=0`` turns it off).
"""

from __future__ import annotations

import os
from itertools import chain
from operator import is_
from typing import Callable, Iterable

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks as _POST_HOOKS
from torch.optim.optimizer import _global_optimizer_pre_hooks as _PRE_HOOKS

from . import _graphs
from ._runtime import ensure_loaded


class _OneCall(torch.optim.Optimizer):
    """What fastffnn's optimizers share: ``train_step`` (a whole step in one native call) and ``fit`` chunks.

    A subclass gives ``_native_step`` (the one-call step), ``_native_fit``
    (many steps in one call), ``_update_group`` (its update of a param group's
    parameters with given gradients) and ``_check_op`` (the checks of its step
    op, for the autograd route).
    """

    _group_defaults: dict = {}  # param-group keys that older checkpoints may lack, with torch's defaults

    def _start(self, params, defaults: dict, unsupported: dict) -> None:
        """Checks the lr and the torch options this optimizer does not take, then builds it."""
        name, lr = type(self).__name__, defaults["lr"]
        if isinstance(lr, torch.Tensor) and (lr.numel() != 1 or not lr.is_floating_point() or lr.device.type != "cpu"):
            raise ValueError(f"fastffnn.optim.{name}: a Tensor lr must be a floating CPU tensor with one element, "
                             f"got {lr.dtype} of shape {tuple(lr.shape)} on {lr.device}")
        if not 0.0 <= lr:
            raise ValueError(f"fastffnn.optim.{name}: invalid learning rate: {lr}")
        for key, value in unsupported.items():
            if value:
                raise ValueError(f"fastffnn.optim.{name}: {key}={value!r} is not supported; it is always one fused "
                                 "native call on the CPU")
        torch.optim.Optimizer.__init__(self, params, defaults)
        self._stepped = _Stepped()

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_stepped" not in self.__dict__:
            self._stepped = _Stepped()
        # load_state_dict ends here: graphs of the old state tensors would only hold their memory
        self.__dict__.pop("_graph_cache", None)
        for group in self.param_groups:
            for key, value in self._group_defaults.items():
                group.setdefault(key, value)

    # LR schedulers set and read `optimizer._opt_called` to tell whether step() ran before their own step().
    # It lives in a plain object of its own because torch.compile does not replay attribute writes on an
    # optimizer, and train_step must set it inside a compiled step too.
    @property
    def _opt_called(self) -> bool:
        return self._stepped.called

    @_opt_called.setter
    def _opt_called(self, value: bool) -> None:
        self._stepped.called = bool(value)

    def _check_holds(self, params) -> list:
        """The model's parameters (no None), after checking that they are exactly this optimizer's."""
        plist = [p for p in params if p is not None]
        groups = self.param_groups
        if len(groups) != 1 or [id(p) for p in groups[0]["params"]] != [id(p) for p in plist]:
            raise ValueError(f"fastffnn.optim.{type(self).__name__}.train_step: the optimizer must hold exactly the "
                             "model's parameters (model.parameters()), in one param group")
        return plist

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One update of every parameter that has a gradient: one native call per param group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ensure_loaded()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError(f"fastffnn.optim.{type(self).__name__} does not support sparse gradients")
            self._update_group(group, params, [p.grad for p in params])
        return loss

    def _update(self, params, grads) -> None:
        self._update_group(self.param_groups[0], params, grads)

    def _hooked(self) -> bool:
        return bool(_PRE_HOOKS or _POST_HOOKS or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks)

    def train_step(self, model: torch.nn.Module, input: torch.Tensor, target: torch.Tensor,
                   reduction: str = "mean") -> torch.Tensor:
        """A whole training step of a FastFFNN or FastMLP in one native call; returns the loss.

        Forward, the cross-entropy against ``target`` (class indices, or
        one-hot/probability rows), backward and this optimizer's update, as
        ``model.zero_grad(); model.nll_loss(input, target, reduction).backward();
        self.step()`` would do, except that ``.grad`` is left untouched. This
        optimizer must hold exactly the model's parameters, in one group.

        Shapes: ``input`` ``(..., input_size)``; ``target`` ``(...)`` class
        indices or ``(..., out_size)`` probabilities. Returns a 0-d tensor.

        Like ``step()``, it runs the optimizer's step pre- and post-hooks
        (called as for ``step()`` with no arguments; a pre-hook's returned
        arguments are ignored) and marks the optimizer as stepped for LR
        schedulers.
        """
        if not (isinstance(input, torch.Tensor) and isinstance(target, torch.Tensor) and isinstance(reduction, str)):
            from .ops import _bad_arguments

            _bad_arguments(f"optim.{type(self).__name__}.train_step", ("input", input, torch.Tensor),
                           ("target", target, torch.Tensor), ("reduction", reduction, str))
        # As step() would: LR schedulers read this flag ("lr_scheduler.step() before optimizer.step()"), and the
        # optimizer's step hooks run around the update.
        self._stepped.called = True
        hooked = self._hooked()
        if hooked:
            for hook in chain(_PRE_HOOKS.values(), self._optimizer_step_pre_hooks.values()):
                hook(self, (self,), {})
        # (weights[0], biases[0], weights[1], ..., activation(s)), or None when the model must run its submodules:
        # FastFFNN gives (V.weight, V.bias, W.weight, W.bias, activation), FastMLP a list of activations
        fused = model._fused_args()
        params = fused[:-1] if fused is not None else ()
        if fused is None or not _one_native_call(params) or not _native_step_serves(input):
            # the fused forward and backward ops through autograd, then the one-launch update
            loss = self._train_step_with_autograd(model, input, target, reduction, fused)
        else:
            # torch.no_grad() as a context manager costs several microseconds; the
            # step records nothing, so grad mode is switched off directly.
            grad_enabled = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                loss = self._native_step(input, target, params, fused[-1], reduction)
            finally:
                torch._C._set_grad_enabled(grad_enabled)
        if hooked:
            for hook in chain(self._optimizer_step_post_hooks.values(), _POST_HOOKS.values()):
                hook(self, (self,), {})
        return loss

    def _train_step_with_autograd(self, model, input, target, reduction, fused):
        """train_step for a model that is not one native call: frozen parameters, some layers without a bias,
        or a model not ``fused()``.

        As ``zero_grad(); nll_loss(...).backward(); step()`` would do: a
        frozen parameter gets no gradient, so ``step()`` leaves it and its
        state alone; an unfused model's loss runs its submodules (hooks,
        parametrizations). Autograd and the fused update: two native calls.
        """
        if fused is not None and _uniform_biases(fused[:-1]):
            plist = self._check_holds(fused[:-1])
            self._check_op(fused[-1])(input, target, plist, fused[1] is not None, fused[-1], reduction)
        else:
            plist = self._check_holds(list(model.parameters()))
            if reduction not in ("mean", "sum"):
                raise ValueError(f"fastffnn.optim.{type(self).__name__}.train_step: reduction must be 'mean' or "
                                 f"'sum' (a step needs one loss), got {reduction!r}")
        trainable = [p for p in plist if p.requires_grad]
        with torch.enable_grad():
            loss = model.nll_loss(input, target, reduction)
            grads = torch.autograd.grad(loss, trainable, allow_unused=True) if trainable else []
        stepped = [(p, g) for p, g in zip(trainable, grads) if g is not None]
        if stepped:
            with torch.no_grad():
                self._update([p for p, _ in stepped], [g for _, g in stepped])
        return loss.detach()


class Adam(_OneCall):
    """Adam whose ``step()`` is one native call over all parameters (CPU: float32/float64; CUDA: also bf16/fp16).

    Same arguments and results as ``torch.optim.Adam`` (lr, betas, eps,
    weight_decay, amsgrad, maximize, decoupled_weight_decay), within float
    rounding. On the CPU, with ``eps >= 1e-16``, a state that would be
    subnormal is 0 (the update runs with subnormals flushed: they take a slow
    path on x86; README, Reliability). ``lr`` may be a one-element CPU tensor,
    as for ``torch.optim.Adam``: with an LR scheduler, a compiled
    ``train_step`` then reads it as an input instead of recompiling at every
    change. ``capturable=True`` keeps each ``step`` counter on its parameter's
    device, as torch.optim.Adam's does, so that ``step()`` and ``train_step``
    on CUDA can be captured in a CUDA graph (with a float lr: a Tensor lr is
    read on the host). ``foreach``, ``differentiable`` and ``fused`` are
    accepted for state-dict compatibility and must keep their defaults.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        if not 0.0 <= eps:
            raise ValueError(f"fastffnn.optim.Adam: invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"fastffnn.optim.Adam: invalid betas: {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"fastffnn.optim.Adam: invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=None, capturable=bool(capturable), differentiable=False, fused=None,
                        decoupled_weight_decay=decoupled_weight_decay)
        self._start(params, defaults, dict(foreach=foreach, differentiable=differentiable, fused=fused))

    _group_defaults = dict(amsgrad=False, maximize=False, decoupled_weight_decay=False, capturable=False)

    def __setstate__(self, state):
        super().__setstate__(state)
        # older torch.optim.Adam checkpoints keep `step` as a Python number; torch converts it here, and so
        # does this (load_state_dict ends in __setstate__)
        for per_param in self.state.values():
            if "step" in per_param and not torch.is_tensor(per_param["step"]):
                per_param["step"] = _step_tensor(per_param["step"])

    def _state_lists(self, group, params):
        """Per-parameter state, created on first use as torch.optim.Adam creates it."""
        exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], []
        # capturable: each counter on its parameter's device, as torch.optim.Adam keeps it (its load_state_dict
        # moves loaded counters there too); otherwise on the CPU
        capturable = bool(group.get("capturable", False))
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = _step_tensor(0.0, p.device if capturable else None)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            step = state["step"]
            if not torch.is_tensor(step):
                state["step"] = _step_tensor(step, p.device if capturable else None)
            elif step.device != (p.device if capturable else torch.device("cpu")):
                state["step"] = step.to(p.device if capturable else "cpu")
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        return exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    def _hyper(self, group):
        """The update's hyper-parameters as the ops take them; a Tensor lr stays a tensor (see _op)."""
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and group.get("capturable") and torch.cuda.is_available() \
                and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("fastffnn.optim.Adam: a Tensor lr is read on the host, so a CUDA graph would replay "
                               "the value it had at the capture: capture with a float lr")
        lr = lr if isinstance(lr, torch.Tensor) else float(lr)
        return (lr, float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]),
                bool(group["amsgrad"]), bool(group["maximize"]), bool(group["decoupled_weight_decay"]))

    def _train_step_args(self, params):
        """(params, has_bias, *state lists) for train_step, rebuilt only when what they come from changes.

        At batch 1 the whole native step takes tens of microseconds, so the
        per-call Python work matters: the lists are cached, keyed by the
        objects they were read from (held, so none can be freed and its
        address reused): this optimizer's state dict (``load_state_dict``
        replaces it), its param group and the parameters in it, the amsgrad
        flag, the number of states, the model's four parameters, and each
        parameter's state dict and the tensors in it, so that a state reset
        (``opt.state[p] = {}``, or new moment tensors) is seen at once.
        """
        groups = self.param_groups
        group = groups[0]
        state = self.state

        def key():
            per_param = list(map(state.get, group["params"]))
            return (state, len(state), group["params"], group["amsgrad"], group.get("capturable"), *params,
                    *group["params"], *per_param,
                    *chain.from_iterable([d.values() for d in per_param if d]))

        cached = self.__dict__.get("_train_step_cache")
        if cached is not None and len(groups) == 1:
            now = key()
            # compared by identity, in C (map), since this runs at every step
            if len(now) == len(cached[0]) and all(map(is_, cached[0], now)):
                return cached[1]
        has_bias = params[1] is not None
        plist = self._check_holds(params)
        args = (plist, has_bias, *self._state_lists(group, plist))
        # the key's state count is read after _state_lists created any missing state
        self.__dict__["_train_step_cache"] = (key(), args)
        return args

    def _check_op(self, activations):
        return (torch.ops.fastffnn._check_ffnn_nll_adam_step_ if isinstance(activations, str)
                else torch.ops.fastffnn._check_mlp_nll_adam_step_)

    def _update_group(self, group, params, grads) -> None:
        hyper = self._hyper(group)
        _op("adam_step_", hyper[0])(params, grads, *self._state_lists(group, params), *hyper)

    def _native_step(self, input, target, params, activations, reduction):
        ops = _train_step_ops or _load_train_step_ops()
        args = self._train_step_args(params)
        hyper = self._hyper(self.param_groups[0])
        # (ffnn or mlp) x (float or Tensor lr): a str activation is FastFFNN's
        op = ops[(not isinstance(activations, str)) * 2 + isinstance(hyper[0], torch.Tensor)]
        # CUDA: a repeated step is replayed from a CUDA graph (not with a Tensor lr, which is read on the host)
        if not _graphs.serves(input) or isinstance(hyper[0], torch.Tensor):
            return op(input, target, *args, activations, reduction, *hyper)
        plist, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = args

        def run(x, t, counters):
            return op(x, t, plist, has_bias, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, counters, activations, reduction,
                      *hyper)

        written = [*plist, *exp_avgs, *exp_avg_sqs, *max_exp_avg_sqs]
        # args is cached while its tensors stay (_train_step_args): its identity stands for theirs
        key = (id(args), tuple([t.data_ptr() for t in written]),
               activations if isinstance(activations, str) else tuple(activations), reduction, hyper)
        return _graphs.step(self, run, input, target, key, written, steps, args)

    def _native_fit(self, X, y, order, batch_size, params, activations, alpha=0.0, sklearn=False):
        """One native call of steps; alpha and sklearn: scikit-learn's L2 penalty and Adam (see fastffnn.sklearn)."""
        plist, has_bias, *states = self._train_step_args(params)
        lr, *hyper = self._hyper(self.param_groups[0])
        return torch.ops.fastffnn.mlp_nll_adam_fit_(X, y, order, batch_size, plist, has_bias, *states,
                                                   _activation_list(activations), float(lr), *hyper, alpha, sklearn)


class SGD(_OneCall):
    """SGD whose ``step()`` is one native call over all parameters (CPU: float32/float64; CUDA: also bf16/fp16).

    Same arguments, state (``momentum_buffer``, only with a momentum) and
    results as ``torch.optim.SGD``: momentum, dampening, nesterov,
    weight_decay and maximize, within float rounding (on the CPU a momentum
    buffer that would be subnormal is 0, as for :class:`Adam`); its ``state_dict``
    loads into ``torch.optim.SGD`` and the reverse. ``lr`` may be a
    one-element CPU tensor (it is read at each step, so a CUDA graph capture
    needs a float lr). On CUDA, ``step()`` and ``train_step`` can be captured
    in a CUDA graph once the momentum buffers exist (with a momentum, after
    the first step).
    ``foreach``, ``differentiable`` and ``fused`` are accepted for state-dict
    compatibility and must keep their defaults. Like :class:`Adam`, it has
    ``train_step`` and drives ``fit``.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float | torch.Tensor = 1e-3,
                 momentum: float = 0, dampening: float = 0, weight_decay: float = 0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        if not 0.0 <= momentum:
            raise ValueError(f"fastffnn.optim.SGD: invalid momentum value: {momentum}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"fastffnn.optim.SGD: invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("fastffnn.optim.SGD: nesterov momentum requires a momentum and zero dampening, got "
                             f"momentum={momentum}, dampening={dampening}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=None, differentiable=False, fused=None)
        self._start(params, defaults, dict(foreach=foreach, differentiable=differentiable, fused=fused))

    _group_defaults = dict(nesterov=False, maximize=False)

    def _hyper(self, group):
        """(lr, momentum, dampening, weight_decay, nesterov, maximize) as the ops take them."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor) and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("fastffnn.optim.SGD: a Tensor lr is read on the host, so a CUDA graph would replay "
                               "the value it had at the capture: capture with a float lr")
        return (float(lr), float(group["momentum"]), float(group["dampening"]),
                float(group["weight_decay"]), bool(group["nesterov"]), bool(group["maximize"]))

    def _buffers(self, group, params):
        """The momentum buffers of params and whether each is new (torch's None): ([], []) without a momentum.

        New buffers are uninitialised here; the op sets them to the gradient.
        ``_keep`` stores them once the op has run.
        """
        if group["momentum"] == 0:
            return [], []
        buffers, fresh = [], []
        for p in params:
            buf = self.state[p].get("momentum_buffer")
            fresh.append(buf is None)
            buffers.append(torch.empty_like(p, memory_format=torch.preserve_format) if buf is None else buf)
        return buffers, fresh

    def _keep(self, params, buffers) -> None:
        for p, buf in zip(params, buffers):
            self.state[p]["momentum_buffer"] = buf

    def _update_group(self, group, params, grads) -> None:
        buffers, fresh = self._buffers(group, params)
        torch.ops.fastffnn.sgd_step_(params, grads, buffers, fresh, *self._hyper(group))
        self._keep(params, buffers)

    def _check_op(self, activations):
        check = torch.ops.fastffnn._check_mlp_nll_sgd_step_
        return lambda input, target, params, has_bias, acts, reduction: check(
            input, target, params, has_bias, _activation_list(acts), reduction)

    def _native_step(self, input, target, params, activations, reduction):
        plist = self._check_holds(params)
        group = self.param_groups[0]
        buffers, fresh = self._buffers(group, plist)
        has_bias, acts, hyper = params[1] is not None, _activation_list(activations), self._hyper(group)

        def run(x, t, steps=()):
            return torch.ops.fastffnn.mlp_nll_sgd_step_.default(x, t, plist, has_bias, buffers, fresh, acts,
                                                                reduction, *hyper)

        # CUDA: a repeated step is replayed from a CUDA graph, once the momentum buffers exist (a first step sets
        # them to the gradients: its replay would do that again)
        if _graphs.serves(input) and not any(fresh):
            written = [*plist, *buffers]
            key = (tuple([id(t) for t in written]), tuple([t.data_ptr() for t in written]), has_bias, tuple(acts),
                   reduction, hyper)
            loss = _graphs.step(self, run, input, target, key, written, (), written)
        else:
            loss = run(input, target)
        self._keep(plist, buffers)
        return loss

    def _native_fit(self, X, y, order, batch_size, params, activations, alpha=0.0, sklearn=False):
        plist = self._check_holds(params)
        group = self.param_groups[0]
        buffers, fresh = self._buffers(group, plist)
        losses = torch.ops.fastffnn.mlp_nll_sgd_fit_(X, y, order, batch_size, plist, params[1] is not None, buffers,
                                                    fresh, _activation_list(activations), *self._hyper(group), alpha)
        if len(order):
            self._keep(plist, buffers)
        return losses


def _activation_list(activations) -> list:
    """The ops' activation list: FastFFNN's one name, or FastMLP's list."""
    return [activations] if isinstance(activations, str) else activations


def fit(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, optimizer: _OneCall, epochs: int = 1,
        batch_size: int = 1, shuffle: bool = True, generator: torch.Generator | None = None,
        callback: Callable[[int, float], object] | None = None, callback_every: int | None = None) -> list[float]:
    """Trains a FastFFNN or FastMLP on ``(X, y)``: whole epochs of ``train_step``, each one native call.

    ``X`` is ``(n, in)``; ``y`` is ``(n,)`` class indices or ``(n, out)``
    one-hot/probability rows. ``optimizer`` is a :class:`Adam` or
    :class:`SGD` holding exactly ``model.parameters()``. Each step is
    ``optimizer.train_step`` with the mean loss; the parameters (and the
    optimizer state) come out bit for bit as from this Python loop::

        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
            for batch in order.split(batch_size):
                if batch_size == 1:                       # the lecture's loop: 1-D examples
                    optimizer.train_step(model, X[batch[0]], y[batch[0]])
                else:                                     # mini-batches, the last one smaller
                    optimizer.train_step(model, X[batch], y[batch])

    so a seeded ``generator`` (or the global RNG's state) reproduces the
    shuffle. Returns each epoch's mean loss: the mean over its examples of
    the loss each step computed for them.

    ``callback(step, loss)`` runs after every ``callback_every`` steps
    (counted across epochs; default: at the end of each epoch) with that
    step's loss. The steps between two callbacks, or within one epoch, are
    one native call; Ctrl-C (KeyboardInterrupt) is raised between two such
    calls, so every step is either applied whole or not at all.

    On CUDA each native call reads the device twice before its first step
    (the labels' range) and never after: its steps gather their batches on
    the device and leave their losses there; the result matches the loop to
    float tolerance. Where a step cannot be one native call (frozen
    parameters, layers with and without biases, optimizer step hooks, a
    module with hooks, CUDA autocast), the same loop runs in Python, with the
    same results.
    """
    ensure_loaded()
    if isinstance(X, torch.Tensor) and X.is_cuda and torch.cuda.is_current_stream_capturing():
        # before the labels' range is read below, which a capture does not allow
        raise RuntimeError("fastffnn.fit: cannot be captured in a CUDA graph: an epoch checks its inputs on the "
                           "device and reads the result back before its first step")
    if not isinstance(optimizer, _OneCall):
        raise TypeError("fastffnn.fit: optimizer must be a fastffnn.optim.Adam or fastffnn.optim.SGD, got "
                        f"{type(optimizer).__name__}")
    if not (isinstance(X, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError(f"fastffnn.fit: X and y must be tensors, got {type(X).__name__} and {type(y).__name__}")
    for name, value, least in (("epochs", epochs, 0), ("batch_size", batch_size, 1),
                               ("callback_every", 1 if callback_every is None else callback_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"fastffnn.fit: {name} must be an int >= {least}, got {value!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"fastffnn.fit: callback must be callable, got {type(callback).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"fastffnn.fit: generator must be a torch.Generator, got {type(generator).__name__}")
    if X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"fastffnn.fit: X must be (examples, features) with at least one example, got shape "
                         f"{tuple(X.shape)}")
    n = X.shape[0]
    if y.dim() not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"fastffnn.fit: y must be ({n},) class indices or ({n}, classes) probabilities for X of "
                         f"shape {tuple(X.shape)}, got shape {tuple(y.shape)}")
    fused = model._fused_args()
    params = fused[:-1] if fused is not None else ()
    native = (fused is not None and _one_native_call(params) and not optimizer._hooked()
              and _native_step_serves(X))
    plist = optimizer._check_holds(params if native else list(model.parameters()))
    if not y.is_floating_point() and y.numel():
        classes = _classes(model)
        lo, hi = int(y.min()), int(y.max())
        if classes is not None and (lo < 0 or hi >= classes):
            raise IndexError(f"fastffnn.fit: y holds class indices from {lo} to {hi}, outside [0, {classes}) for "
                             f"the model's {classes} classes")
    if native:
        # every check of the op before the first step (the kernel checks the values of the order and labels)
        optimizer._native_fit(X, y, torch.arange(0), batch_size, params, fused[-1])
    steps_per_epoch = -(-n // batch_size)
    every = callback_every if callback is not None and callback_every is not None else steps_per_epoch
    means, done = [], 0
    optimizer._stepped.called = True
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        total, first = 0.0, 0
        while first < steps_per_epoch:
            take = min(steps_per_epoch - first, every - done % every)
            rows = order[first * batch_size:(first + take) * batch_size]
            if native:
                with torch.no_grad():
                    losses = optimizer._native_fit(X, y, rows, batch_size, params, fused[-1])
            else:
                losses = torch.stack([optimizer.train_step(model, X[b[0]] if batch_size == 1 else X[b],
                                                           y[b[0]] if batch_size == 1 else y[b])
                                      for b in rows.split(batch_size)])
            sizes = torch.full((take,), batch_size, dtype=torch.float64)
            sizes[-1] = len(rows) - (take - 1) * batch_size
            total += float((losses.double().cpu() * sizes).sum())
            first += take
            done += take
            if callback is not None and done % every == 0:
                callback(done, float(losses[-1]))
        means.append(total / n)
    return means


def _classes(model) -> int | None:
    """The number of classes of a FastFFNN or FastMLP: its last nn.Linear's out_features."""
    last = None
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            last = m
    return last.out_features if last is not None else None


_EMULATED = os.environ.get("FASTFFNN_BACKEND", "auto").lower() == "emulated"  # read as _build.backend() reads it


def _native_step_serves(t: torch.Tensor) -> bool:
    """Whether train_step's one native call serves ``t``'s device: the CPU's steps (csrc/cpu/train.cpp), or the
    CUDA ones (csrc/cuda/train_cuda.cpp) for CUDA tensors and, in the emulated build, for CPU tensors. Not under CUDA
    autocast: the step computes in the parameters' dtype, where the autograd route follows autocast."""
    if t.device.type == "cuda" or (_EMULATED and t.device.type == "cpu"):
        return not torch.is_autocast_enabled("cuda")
    return t.device.type == "cpu"


def _uniform_biases(params) -> bool:
    """Whether every layer has a bias or none has: ``params`` is (weights[0], biases[0], weights[1], ...)."""
    with_bias = params[1] is not None
    for b in params[3::2]:
        if (b is not None) != with_bias:
            return False
    return True


def _one_native_call(params) -> bool:
    """Whether train_step's one native call applies: every parameter trainable, and biases in all layers or none."""
    if not _uniform_biases(params):
        return False
    for p in params:
        if p is not None and not p.requires_grad:
            return False
    return True


def _op(name: str, lr):
    """The op ``name``, in its overload for a Tensor lr where ``lr`` is one.

    A Tensor lr (as torch.optim.Adam accepts, and as LR schedulers update in
    place) reaches the kernel as a tensor, so that a compiled step reads it as
    an input and an LR change does not recompile it.
    """
    packet = getattr(torch.ops.fastffnn, name)
    return packet.tensor_lr if isinstance(lr, torch.Tensor) else packet.default


class _Stepped:
    """Whether the optimizer has stepped (``Adam._opt_called``)."""

    __slots__ = ("called",)

    def __init__(self) -> None:
        self.called = False


def _step_tensor(value, device=None) -> torch.Tensor:
    """A step counter as torch.optim.Adam keeps it: float64 only when that is the default dtype; on the CPU, or
    (capturable) on the given device."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(float(value), dtype=dtype, device=device)


_train_step_ops = None


def _load_train_step_ops():
    """The one-call step's ops, looked up once (each torch.ops lookup costs microseconds at batch 1)."""
    global _train_step_ops
    ensure_loaded()
    ffnn, mlp = torch.ops.fastffnn.ffnn_nll_adam_step_, torch.ops.fastffnn.mlp_nll_adam_step_
    _train_step_ops = (ffnn.default, ffnn.tensor_lr, mlp.default, mlp.tensor_lr)
    return _train_step_ops
