"""FastFFNN: a drop-in for the lecture's ``FFNN(inp, hid, out)``."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _hooks

from . import ops
from . import optim as _optim

_ACTIVATION_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
_ACTIVATION_NAMES = {cls: name for name, cls in _ACTIVATION_MODULES.items()}
_LINEAR, _SOFTMAX = nn.Linear, nn.Softmax
# the hooks registered for every module (torch.nn.modules.module.register_module_forward_hook and co.)
_GLOBAL_HOOKS = (_hooks._global_forward_hooks, _hooks._global_forward_pre_hooks, _hooks._global_backward_hooks,
                 _hooks._global_backward_pre_hooks)


def activation_name(g: nn.Module) -> str:
    """The fused activation a ``g`` module stands for; raises for any other module."""
    name = _ACTIVATION_NAMES.get(type(g))
    if name is not None:
        return name
    raise ValueError(
        f"fastffnn: the activation must be nn.Tanh, nn.ReLU or nn.Sigmoid, got {type(g).__name__}"
    )


def cross_entropy_last_dim(logits: Tensor, target: Tensor, reduction: str) -> Tensor:
    """``F.cross_entropy`` with the classes in the last dim, as fastffnn's losses take them (the unfused path)."""
    classes = logits.shape[-1]
    flat_target = target.reshape(-1) if not target.is_floating_point() else target.reshape(-1, classes)
    loss = F.cross_entropy(logits.reshape(-1, classes), flat_target, reduction=reduction)
    return loss.reshape(logits.shape[:-1]) if reduction == "none" else loss


class FastFFNN(nn.Module):
    """``P(y|x) = softmax(W g(V x))`` with fused native kernels.

    It has the lecture FFNN's submodules ``V`` (an ``nn.Linear``), ``g`` (the
    activation module), ``W`` (an ``nn.Linear``) and ``softmax``, so its
    parameters and ``state_dict`` keys are ``V.weight``, ``V.bias``,
    ``W.weight`` and ``W.bias``: a stock FFNN checkpoint loads unchanged,
    and so does everything that touches ``model.V.weight`` and friends.

    ``forward`` returns probabilities over the last dim (the class dim), which
    for the lecture's 1-D input is the same as its ``nn.Softmax(dim=0)``.

    Args:
        input_size, hidden_size, out_size: the layer widths.
        activation: ``"tanh"`` (default), ``"relu"`` or ``"sigmoid"``.
        bias: whether ``V`` and ``W`` have biases.
        device, dtype: as for ``nn.Linear``; float32 or float64.

    Shapes:
        input ``(..., input_size)`` -> output ``(..., out_size)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        out_size: int,
        activation: str = "tanh",
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATION_MODULES:
            raise ValueError(
                f"fastffnn: activation must be one of {sorted(_ACTIVATION_MODULES)}, got {activation!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.V = nn.Linear(input_size, hidden_size, bias=bias, **factory)
        self.g = _ACTIVATION_MODULES[activation]()
        self.W = nn.Linear(hidden_size, out_size, bias=bias, **factory)
        self.softmax = nn.Softmax(dim=-1)

    @property
    def activation(self) -> str:
        """The name of ``g``; replacing ``model.g`` with another supported module changes it."""
        if torch.compiler.is_compiling():
            return activation_name(self.g)
        return activation_name(self._modules["g"])

    def layer_parameters(self) -> tuple:
        """``(V.weight, V.bias, W.weight, W.bias)`` (a bias is None without biases), read fresh on every call.

        What the fused ops and :meth:`fastffnn.optim.Adam.train_step` take, in
        their order, without ``nn.Module.__getattr__``'s per-attribute cost.
        A parametrized weight (``register_parametrization``, ``weight_norm``)
        is read through its parametrization.
        """
        modules = self._modules
        V, W = modules["V"], modules["W"]
        if torch.compiler.is_compiling() or not isinstance(V, nn.Linear) or not isinstance(W, nn.Linear):
            return self._layer_parameters_slow()
        # nn.Module.__getattr__ costs microseconds per attribute, comparable to
        # a whole batch-1 kernel; the dicts behind it are read directly.
        Vp, Wp = V._parameters, W._parameters
        if "weight" not in Vp or "weight" not in Wp:  # parametrized: the weight is computed
            return self._layer_parameters_slow()
        return Vp["weight"], Vp.get("bias"), Wp["weight"], Wp.get("bias")

    def _layer_parameters_slow(self) -> tuple:
        for name in ("V", "W"):
            layer = getattr(self, name)
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"fastffnn.FastFFNN: {name} must be an nn.Linear (or a subclass), got "
                                f"{type(layer).__name__}")
        return self.V.weight, self.V.bias, self.W.weight, self.W.bias

    def fused(self) -> bool:
        """Whether the fused ops compute exactly what the submodules would, so that they run.

        True for the model as built: ``V`` and ``W`` plain ``nn.Linear`` (no
        parametrization, no subclass), ``g`` one of the fused activations,
        ``softmax`` an ``nn.Softmax`` over the last dim, and no forward or
        backward hooks on any of them or on every module. Otherwise
        ``forward``, ``log_probs`` and ``nll_loss`` run the submodules
        themselves, as the lecture's FFNN does, so their hooks fire and their
        changes take effect; a warning says so once per model.
        """
        return self._fused_args() is not None

    def _fused_args(self) -> tuple | None:
        """``(V.weight, V.bias, W.weight, W.bias, activation)`` when :meth:`fused`, else None.

        Checked on every call (a hook or a parametrization can come at any
        time), as one expression over the dicts nn.Module keeps them in: the
        same checks nn.Module.__call__ makes for each submodule.
        """
        m = self._modules
        V, g, W, sm = m["V"], m["g"], m["W"], m["softmax"]
        act = _ACTIVATION_NAMES.get(type(g))
        if (act is None or type(V) is not _LINEAR or type(W) is not _LINEAR or type(sm) is not _SOFTMAX
                or sm.dim != -1
                or V._forward_hooks or V._forward_pre_hooks or V._backward_hooks or V._backward_pre_hooks
                or W._forward_hooks or W._forward_pre_hooks or W._backward_hooks or W._backward_pre_hooks
                or g._forward_hooks or g._forward_pre_hooks or g._backward_hooks or g._backward_pre_hooks
                or sm._forward_hooks or sm._forward_pre_hooks or sm._backward_hooks or sm._backward_pre_hooks
                or _GLOBAL_HOOKS[0] or _GLOBAL_HOOKS[1] or _GLOBAL_HOOKS[2] or _GLOBAL_HOOKS[3]):
            return None
        Vp, Wp = V._parameters, W._parameters
        Vw, Ww = Vp.get("weight"), Wp.get("weight")
        if Vw is None or Ww is None:  # a weight computed by a hook (torch.nn.utils.weight_norm's old form)
            return None
        return Vw, Vp.get("bias"), Ww, Wp.get("bias"), act

    def _unfused(self, what: str) -> None:
        if not self.__dict__.get("_warned_unfused"):
            self.__dict__["_warned_unfused"] = True
            warnings.warn(f"fastffnn.FastFFNN: {what} runs the submodules one by one, unfused, because "
                          f"{self._why_unfused()}; the results are stock PyTorch's", stacklevel=3)

    def _why_unfused(self) -> str:
        modules = self._modules
        for name in ("V", "W"):
            if type(modules[name]) is not nn.Linear or "weight" not in modules[name]._parameters:
                return f"{name} is a {type(modules[name]).__name__} with a computed or custom weight"
        if type(modules["g"]) not in _ACTIVATION_NAMES:
            return f"g is {type(modules['g']).__name__}, which is not one of nn.Tanh, nn.ReLU, nn.Sigmoid"
        sm = modules["softmax"]
        if type(sm) is not nn.Softmax or sm.dim != -1:
            return f"softmax is {sm!r}, not nn.Softmax(dim=-1)"
        return "a submodule or every module has hooks"

    def _logits_unfused(self, x: Tensor) -> Tensor:
        return self.W(self.g(self.V(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities ``(..., out_size)`` for ``x`` of shape ``(..., input_size)``."""
        args = self._fused_args()
        if args is None:
            self._unfused("forward")
            return self.softmax(self._logits_unfused(x))
        return ops.ffnn(x, *args)

    def log_probs(self, x: Tensor) -> Tensor:
        """Log-probabilities ``(..., out_size)``, computed as ``z - logsumexp(z)``, never ``log(p)``."""
        args = self._fused_args()
        if args is None:
            self._unfused("log_probs")
            return torch.log_softmax(self._logits_unfused(x), -1)
        return ops.ffnn(x, *args, log=True)

    def nll_loss(self, x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """The fused cross-entropy of the network's prediction for ``x``.

        Args:
            x: ``(..., input_size)``.
            target: class indices ``(...)`` (integer), or probabilities / one-hot
                labels ``(..., out_size)`` in ``x``'s dtype.
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.

        When the model is not :meth:`fused`, this is ``F.cross_entropy`` of
        ``W(g(V(x)))`` (the ``softmax`` submodule is not consulted).
        """
        args = self._fused_args()
        if args is None:
            self._unfused("nll_loss")
            return cross_entropy_last_dim(self._logits_unfused(x), target, reduction)
        Vw, Vb, Ww, Wb, act = args
        return ops.ffnn_nll(x, Vw, Vb, Ww, Wb, target, activation=act, reduction=reduction)

    def train_step(self, x: Tensor, target: Tensor, optimizer, reduction: str = "mean") -> Tensor:
        """A whole training step in one native call: forward, loss, backward and the optimizer's update.

        ``optimizer`` must be a :class:`fastffnn.optim.Adam` or
        :class:`fastffnn.optim.SGD` over ``model.parameters()``. Equivalent to ``model.zero_grad();
        model.nll_loss(x, target, reduction).backward(); optimizer.step()``,
        except that ``.grad`` is left untouched; returns the loss (detached).
        In the lecture's loop, the five lines of a step become
        ``loss = ffnn.train_step(input, gold_label, optimizer)``.
        """
        if not isinstance(optimizer, _optim._OneCall):
            raise TypeError(
                f"fastffnn: train_step needs a fastffnn.optim.Adam or SGD, got {type(optimizer).__name__}; "
                "use model.nll_loss(...).backward() and optimizer.step() with other optimizers"
            )
        return optimizer.train_step(self, x, target, reduction)

    def fit(self, X: Tensor, y: Tensor, optimizer, epochs: int = 1, batch_size: int = 1, shuffle: bool = True,
            generator: torch.Generator | None = None, callback=None, callback_every: int | None = None) -> list[float]:
        """Trains on ``X`` ``(n, in)`` and ``y`` ``(n,)`` or ``(n, out)``, each epoch one native call:
        :func:`fastffnn.optim.fit`, which says what it runs. Returns each epoch's mean loss."""
        return _optim.fit(self, X, y, optimizer, epochs, batch_size, shuffle, generator, callback, callback_every)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # nn.Module names the key and both shapes for a size mismatch and lists
        # missing keys, but silently casts a tensor of another dtype; a
        # checkpoint in the wrong precision is refused here instead.
        for name, param in zip(("V.weight", "V.bias", "W.weight", "W.bias"), self.layer_parameters()):
            incoming = state_dict.get(prefix + name)
            if param is None or not isinstance(incoming, torch.Tensor) or incoming.dtype == param.dtype:
                continue
            error_msgs.append(
                f"dtype mismatch for {prefix + name}: the checkpoint has {incoming.dtype} of shape "
                f"{tuple(incoming.shape)}, the model has {param.dtype} of shape {tuple(param.shape)}; convert one "
                f"of them first (model.to({incoming.dtype}) or tensor.to({param.dtype}))")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        g = self._modules.get("g")
        name = _ACTIVATION_NAMES.get(type(g))
        return f"activation={name!r}" if name else f"activation={type(g).__name__} (not fused)"

    @classmethod
    def from_module(cls, m: nn.Module) -> "FastFFNN":
        """A FastFFNN with the same weights as the lecture's ``FFNN`` or an equivalent ``nn.Sequential``.

        Accepted: a module with attributes ``V`` (nn.Linear), ``g`` (nn.Tanh,
        nn.ReLU or nn.Sigmoid) and ``W`` (nn.Linear), like the lecture's FFNN;
        or ``nn.Sequential(nn.Linear, activation, nn.Linear, nn.Softmax)``.
        The result lives on the source's device and dtype and shares no storage
        with it. Anything else raises ``ValueError`` saying what did not fit.
        """
        if isinstance(m, nn.Sequential):
            layers = list(m)
            kinds = [type(layer).__name__ for layer in layers]
            if len(layers) != 4 or not isinstance(layers[3], nn.Softmax):
                raise ValueError(
                    "fastffnn.FastFFNN.from_module: expected nn.Sequential(Linear, Tanh/ReLU/Sigmoid, Linear, "
                    f"Softmax), got nn.Sequential({', '.join(kinds)})"
                )
            V, g, W = layers[0], layers[1], layers[2]
        elif all(hasattr(m, name) for name in ("V", "g", "W")):
            V, g, W = m.V, m.g, m.W
        else:
            raise ValueError(
                "fastffnn.FastFFNN.from_module: expected the lecture's FFNN (submodules V, g, W) or "
                f"nn.Sequential(Linear, activation, Linear, Softmax), got {type(m).__name__}"
            )
        for name, layer in (("V", V), ("W", W)):
            if type(layer) is not nn.Linear:
                raise ValueError(f"fastffnn.FastFFNN.from_module: {name} must be nn.Linear, got {type(layer).__name__}")
        if V.out_features != W.in_features:
            raise ValueError(
                f"fastffnn.FastFFNN.from_module: V has {V.out_features} outputs but W takes {W.in_features} inputs"
            )
        if (V.bias is None) != (W.bias is None):
            raise ValueError("fastffnn.FastFFNN.from_module: V and W must both have a bias or both have none")
        act = activation_name(g)
        fast = cls(
            V.in_features, V.out_features, W.out_features, activation=act, bias=V.bias is not None,
            device=V.weight.device, dtype=V.weight.dtype,
        )
        with torch.no_grad():
            fast.V.load_state_dict(V.state_dict())
            fast.W.load_state_dict(W.state_dict())
        return fast
