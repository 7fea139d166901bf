"""FastFFNN: a drop-in for the lecture's ``FFNN(inp, hid, out)``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import ops
from . import optim as _optim

_ACTIVATION_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}
_ACTIVATION_NAMES = {cls: name for name, cls in _ACTIVATION_MODULES.items()}


def activation_name(g: nn.Module) -> str:
    """The fused activation a ``g`` module stands for; raises for any other module."""
    name = _ACTIVATION_NAMES.get(type(g))
    if name is not None:
        return name
    raise ValueError(
        f"fastffnn: the activation must be nn.Tanh, nn.ReLU or nn.Sigmoid, got {type(g).__name__}"
    )


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
        """
        if torch.compiler.is_compiling():
            return self.V.weight, self.V.bias, self.W.weight, self.W.bias
        # nn.Module.__getattr__ costs microseconds per attribute, comparable to
        # a whole batch-1 kernel; the dicts behind it are read directly.
        modules = self._modules
        V, W = modules["V"]._parameters, modules["W"]._parameters
        return V["weight"], V.get("bias"), W["weight"], W.get("bias")

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities ``(..., out_size)`` for ``x`` of shape ``(..., input_size)``."""
        return ops.ffnn(x, *self.layer_parameters(), activation=self.activation)

    def log_probs(self, x: Tensor) -> Tensor:
        """Log-probabilities ``(..., out_size)``, computed as ``z - logsumexp(z)``, never ``log(p)``."""
        return ops.ffnn(x, *self.layer_parameters(), activation=self.activation, log=True)

    def nll_loss(self, x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """The fused cross-entropy of the network's prediction for ``x``.

        Args:
            x: ``(..., input_size)``.
            target: class indices ``(...)`` (integer), or probabilities / one-hot
                labels ``(..., out_size)`` in ``x``'s dtype.
            reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        """
        return ops.ffnn_nll(x, *self.layer_parameters(), target, activation=self.activation, reduction=reduction)

    def train_step(self, x: Tensor, target: Tensor, optimizer, reduction: str = "mean") -> Tensor:
        """A whole training step in one native call: forward, loss, backward and the Adam update.

        ``optimizer`` must be a :class:`fastffnn.optim.Adam` over
        ``model.parameters()``. Equivalent to ``model.zero_grad();
        model.nll_loss(x, target, reduction).backward(); optimizer.step()``,
        except that ``.grad`` is left untouched; returns the loss (detached).
        In the lecture's loop, the five lines of a step become
        ``loss = ffnn.train_step(input, gold_label, optimizer)``.
        """
        if not isinstance(optimizer, _optim.Adam):
            raise TypeError(
                f"fastffnn: train_step needs a fastffnn.optim.Adam, got {type(optimizer).__name__}; "
                "use model.nll_loss(...).backward() and optimizer.step() with other optimizers"
            )
        return optimizer.train_step(self, x, target, reduction)

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
        return f"activation={self.activation!r}"

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
