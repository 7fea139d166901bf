"""A fused Adam: ``torch.optim.Adam``'s update, for every parameter in one native call.

``fastffnn.optim.Adam`` takes ``torch.optim.Adam``'s arguments, keeps the same
per-parameter state (``step``, ``exp_avg``, ``exp_avg_sq`` and, with amsgrad,
``max_exp_avg_sq``) and the same param-group keys, so its ``state_dict`` loads
into ``torch.optim.Adam`` and the reverse. CPU tensors only (on CUDA use
``torch.optim.Adam(fused=True)``).
"""

from __future__ import annotations

from itertools import chain
from operator import is_
from typing import Callable, Iterable

import torch
from torch.optim.optimizer import _global_optimizer_post_hooks as _POST_HOOKS
from torch.optim.optimizer import _global_optimizer_pre_hooks as _PRE_HOOKS

from ._runtime import ensure_loaded


class Adam(torch.optim.Optimizer):
    """Adam whose ``step()`` is one native call over all parameters (float32/float64, CPU).

    Same arguments and results as ``torch.optim.Adam`` (lr, betas, eps,
    weight_decay, amsgrad, maximize, decoupled_weight_decay), within float
    rounding. ``lr`` may be a one-element CPU tensor, as for
    ``torch.optim.Adam``: with an LR scheduler, a compiled ``train_step`` then
    reads it as an input instead of recompiling at every change. ``foreach``, ``capturable``, ``differentiable`` and ``fused`` are
    accepted for state-dict compatibility and must keep their defaults.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float | torch.Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: bool | None = None,
                 decoupled_weight_decay: bool = False) -> None:
        if isinstance(lr, torch.Tensor) and (lr.numel() != 1 or not lr.is_floating_point() or lr.device.type != "cpu"):
            raise ValueError("fastffnn.optim.Adam: a Tensor lr must be a floating CPU tensor with one element, got "
                             f"{lr.dtype} of shape {tuple(lr.shape)} on {lr.device}")
        if not 0.0 <= lr:
            raise ValueError(f"fastffnn.optim.Adam: invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"fastffnn.optim.Adam: invalid epsilon value: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"fastffnn.optim.Adam: invalid betas: {betas}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"fastffnn.optim.Adam: invalid weight_decay value: {weight_decay}")
        for name, value in (("foreach", foreach), ("capturable", capturable), ("differentiable", differentiable),
                            ("fused", fused)):
            if value:
                raise ValueError(f"fastffnn.optim.Adam: {name}={value!r} is not supported; it is always one fused "
                                 "native call on the CPU")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        foreach=None, capturable=False, differentiable=False, fused=None,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults)
        self._stepped = _Stepped()

    # LR schedulers set and read `optimizer._opt_called` to tell whether step() ran before their own step().
    # It lives in a plain object of its own because torch.compile does not replay attribute writes on an
    # optimizer, and train_step must set it inside a compiled step too.
    @property
    def _opt_called(self) -> bool:
        return self._stepped.called

    @_opt_called.setter
    def _opt_called(self, value: bool) -> None:
        self._stepped.called = bool(value)

    def __setstate__(self, state):
        super().__setstate__(state)
        if "_stepped" not in self.__dict__:
            self._stepped = _Stepped()
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("decoupled_weight_decay", False)
        # older torch.optim.Adam checkpoints keep `step` as a Python number; torch converts it here, and so
        # does this (load_state_dict ends in __setstate__)
        for per_param in self.state.values():
            if "step" in per_param and not torch.is_tensor(per_param["step"]):
                per_param["step"] = _step_tensor(per_param["step"])

    def _state_lists(self, group, params):
        """Per-parameter state, created on first use as torch.optim.Adam creates it."""
        exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                state["step"] = _step_tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if not torch.is_tensor(state["step"]):
                state["step"] = _step_tensor(state["step"])
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
        lr = lr if isinstance(lr, torch.Tensor) else float(lr)
        return (lr, float(beta1), float(beta2), float(group["eps"]), float(group["weight_decay"]),
                bool(group["amsgrad"]), bool(group["maximize"]), bool(group["decoupled_weight_decay"]))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One Adam update of every parameter that has a gradient."""
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
                    raise RuntimeError("fastffnn.optim.Adam does not support sparse gradients")
            grads = [p.grad for p in params]
            hyper = self._hyper(group)
            _op("adam_step_", hyper[0])(params, grads, *self._state_lists(group, params), *hyper)
        return loss

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
            return (state, len(state), group["params"], group["amsgrad"], *params, *group["params"], *per_param,
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

    def _check_holds(self, params) -> list:
        """The model's parameters (no None), after checking that they are exactly this optimizer's."""
        plist = [p for p in params if p is not None]
        groups = self.param_groups
        if len(groups) != 1 or [id(p) for p in groups[0]["params"]] != [id(p) for p in plist]:
            raise ValueError("fastffnn.optim.Adam.train_step: the optimizer must hold exactly the model's parameters "
                             "(model.parameters()), in one param group")
        return plist

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

            _bad_arguments("optim.Adam.train_step", ("input", input, torch.Tensor), ("target", target, torch.Tensor),
                           ("reduction", reduction, str))
        ops = _train_step_ops or _load_train_step_ops()
        # As step() would: LR schedulers read this flag ("lr_scheduler.step() before optimizer.step()"), and the
        # optimizer's step hooks run around the update.
        self._stepped.called = True
        hooked = bool(_PRE_HOOKS or _POST_HOOKS or self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks)
        if hooked:
            for hook in chain(_PRE_HOOKS.values(), self._optimizer_step_pre_hooks.values()):
                hook(self, (self,), {})
        # (weights[0], biases[0], weights[1], ..., activation(s)), or None when the model must run its submodules:
        # FastFFNN gives (V.weight, V.bias, W.weight, W.bias, activation), FastMLP a list of activations
        fused = model._fused_args()
        params = fused[:-1] if fused is not None else ()
        if fused is None or not _one_native_call(params):
            loss = self._train_step_with_autograd(model, input, target, reduction, fused)
        else:
            args = self._train_step_args(params)
            hyper = self._hyper(self.param_groups[0])
            acts = fused[-1]
            # (ffnn or mlp) x (float or Tensor lr): a str activation is FastFFNN's
            op = ops[(not isinstance(acts, str)) * 2 + isinstance(hyper[0], torch.Tensor)]
            # torch.no_grad() as a context manager costs several microseconds; the
            # step records nothing, so grad mode is switched off directly.
            grad_enabled = torch.is_grad_enabled()
            torch._C._set_grad_enabled(False)
            try:
                loss = op(input, target, *args, acts, reduction, *hyper)
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
            check = (torch.ops.fastffnn._check_ffnn_nll_adam_step_ if isinstance(fused[-1], str)
                     else torch.ops.fastffnn._check_mlp_nll_adam_step_)
            check(input, target, plist, fused[1] is not None, fused[-1], reduction)
        else:
            plist = self._check_holds(list(model.parameters()))
            if reduction not in ("mean", "sum"):
                raise ValueError("fastffnn.ffnn_nll_adam_step_: reduction must be 'mean' or 'sum' (a step needs one "
                                 f"loss), got {reduction!r}")
        trainable = [p for p in plist if p.requires_grad]
        with torch.enable_grad():
            loss = model.nll_loss(input, target, reduction)
            grads = torch.autograd.grad(loss, trainable, allow_unused=True) if trainable else []
        stepped = [(p, g) for p, g in zip(trainable, grads) if g is not None]
        if stepped:
            group = self.param_groups[0]
            ps, gs = [p for p, _ in stepped], [g for _, g in stepped]
            with torch.no_grad():
                hyper = self._hyper(group)
                _op("adam_step_", hyper[0])(ps, gs, *self._state_lists(group, ps), *hyper)
        return loss.detach()


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


def _step_tensor(value) -> torch.Tensor:
    """A step counter as torch.optim.Adam keeps it: float64 only when that is the default dtype."""
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(float(value), dtype=dtype)


_train_step_ops = None


def _load_train_step_ops():
    """The one-call step's ops, looked up once (each torch.ops lookup costs microseconds at batch 1)."""
    global _train_step_ops
    ensure_loaded()
    ffnn, mlp = torch.ops.fastffnn.ffnn_nll_adam_step_, torch.ops.fastffnn.mlp_nll_adam_step_
    _train_step_ops = (ffnn.default, ffnn.tensor_lr, mlp.default, mlp.tensor_lr)
    return _train_step_ops
