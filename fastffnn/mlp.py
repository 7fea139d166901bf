"""FastMLP: a feed-forward classifier of any depth, with the keys of the equivalent ``nn.Sequential``.

Its forward, log-probabilities and loss are one call each of the whole-network
ops ``fastffnn.ops.mlp`` and ``mlp_nll`` (forward and backward: one native
call each way), and ``fastffnn.optim.Adam.train_step`` takes it in one native
call with the update. On CUDA, narrow networks of up to 16 layers take the
fully fused tier (csrc/cuda/fused_mlp.cu), the others the general tier
(cuBLAS products and fastffnn's epilogues).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn

from . import ops
from .module import _ACTIVATION_MODULES, _ACTIVATION_NAMES, _GLOBAL_HOOKS, cross_entropy_last_dim


def _hooked(m: nn.Module) -> bool:
    d = m.__dict__
    return bool(d["_forward_hooks"] or d["_forward_pre_hooks"] or d["_backward_hooks"] or d["_backward_pre_hooks"])


class FastMLP(nn.Sequential):
    """``softmax(L_k(g_k(... g_1(L_1 x))))`` with fused kernels, for ``k >= 0`` hidden layers.

    It is an ``nn.Sequential(Linear, act, Linear, act, ..., Linear, Softmax(dim=-1))``, so its
    ``state_dict`` keys are that Sequential's (``0.weight``, ``0.bias``, ``2.weight``, ...) and
    checkpoints load both ways.

    Args:
        sizes: ``[in, h1, ..., hk, out]``; ``k = 0`` is softmax regression.
        activation: one of ``"tanh"``, ``"relu"``, ``"sigmoid"``, or a list with one per hidden layer.
        bias: whether the layers have biases.
        device, dtype: as for ``nn.Linear``.

    Shapes:
        input ``(..., in)`` -> output ``(..., out)`` probabilities over the last dim.
    """

    def __init__(self, sizes: Sequence[int], activation: str | Sequence[str] = "tanh", bias: bool = True,
                 device=None, dtype=None) -> None:
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"fastffnn.FastMLP: sizes must be [in, hidden..., out] with at least 2 entries, got {sizes}")
        for i, n in enumerate(sizes):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"fastffnn.FastMLP: sizes[{i}] must be a positive int, got {n!r} (sizes {sizes})")
        hidden = len(sizes) - 2
        acts = [activation] * hidden if isinstance(activation, str) else list(activation)
        if len(acts) != hidden:
            raise ValueError(f"fastffnn.FastMLP: {len(acts)} activations for {hidden} hidden "
                             f"layer{'' if hidden == 1 else 's'} (sizes {sizes})")
        for i, a in enumerate(acts):
            if a not in _ACTIVATION_MODULES:
                raise ValueError(f"fastffnn.FastMLP: activation {i} must be one of {sorted(_ACTIVATION_MODULES)}, "
                                 f"got {a!r}")
        factory = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = []
        for i in range(hidden):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=bias, **factory), _ACTIVATION_MODULES[acts[i]]()]
        layers += [nn.Linear(sizes[-2], sizes[-1], bias=bias, **factory), nn.Softmax(dim=-1)]
        super().__init__(*layers)

    def __getitem__(self, idx):
        # nn.Sequential slices by calling its own class with the modules; a slice of a classifier is
        # not one, so it is the plain nn.Sequential of those modules (model[:-1] gives the logits).
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(list(self._modules.items())[idx]))
        return super().__getitem__(idx)

    # ------------------------------------------------------------ the plan
    def _plan(self):
        """``(weights, biases, activations)`` lists for the fused ops, or None.

        None when a hook, a parametrization or a swapped module would make the
        fused ops compute something else than the modules: the modules then run.
        """
        if any(_GLOBAL_HOOKS):
            return None
        mods = tuple(self._modules.values())
        last = mods[-1] if mods else None
        if len(mods) < 2 or len(mods) % 2 or type(last) is not nn.Softmax or last.dim != -1 or _hooked(last):
            return None
        weights, biases, acts = [], [], []
        # every call, because hooks, parametrizations and swapped modules can come at any time
        for i in range(0, len(mods), 2):
            lin = mods[i]
            if type(lin) is not nn.Linear or _hooked(lin):
                return None
            p = lin._parameters
            w = p.get("weight")
            if w is None:
                return None
            weights.append(w)
            biases.append(p.get("bias"))
            if i + 2 < len(mods):
                act = mods[i + 1]
                name = _ACTIVATION_NAMES.get(type(act))
                if name is None or _hooked(act):
                    return None
                acts.append(name)
        return weights, biases, acts

    def fused(self) -> bool:
        """Whether the fused ops run (see :class:`fastffnn.FastFFNN`'s ``fused``)."""
        return self._plan() is not None

    def _fused_args(self):
        """``(weights[0], biases[0], weights[1], biases[1], ..., activations)`` for ``optim.Adam.train_step``,
        or None when the modules must run (see ``_plan``)."""
        plan = self._plan()
        if plan is None:
            return None
        weights, biases, acts = plan
        return (*[t for pair in zip(weights, biases) for t in pair], acts)

    def _unfused(self, what: str) -> None:
        if not self.__dict__.get("_warned_unfused"):
            self.__dict__["_warned_unfused"] = True
            warnings.warn(f"fastffnn.FastMLP: {what} runs the modules one by one, unfused, because a module has "
                          "hooks, a parametrization or another type than FastMLP builds; the results are stock "
                          "PyTorch's", stacklevel=3)

    def _logits_unfused(self, x: Tensor) -> Tensor:
        for m in list(self._modules.values())[:-1]:
            x = m(x)
        return x

    # ------------------------------------------------------------ the API
    def forward(self, x: Tensor) -> Tensor:
        """Probabilities ``(..., out)`` for ``x`` of shape ``(..., in)``: one native call (``fastffnn.ops.mlp``)."""
        plan = self._plan()
        if plan is None:
            self._unfused("forward")
            return super().forward(x)
        if not isinstance(x, Tensor):
            ops._bad_arguments("FastMLP", ("input", x, Tensor))
        return ops._mlp(x, *plan, False)

    def log_probs(self, x: Tensor) -> Tensor:
        """Log-probabilities ``(..., out)``, computed as ``z - logsumexp(z)``."""
        plan = self._plan()
        if plan is None:
            self._unfused("log_probs")
            return torch.log_softmax(self._logits_unfused(x), -1)
        if not isinstance(x, Tensor):
            ops._bad_arguments("FastMLP.log_probs", ("input", x, Tensor))
        return ops._mlp(x, *plan, True)

    def nll_loss(self, x: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """The cross-entropy of the prediction for ``x`` against class indices ``(...)`` or probabilities ``(..., out)``."""
        plan = self._plan()
        if plan is None:
            self._unfused("nll_loss")
            return cross_entropy_last_dim(self._logits_unfused(x), target, reduction)
        if not (isinstance(x, Tensor) and isinstance(target, Tensor) and isinstance(reduction, str)):
            ops._bad_arguments("FastMLP.nll_loss", ("input", x, Tensor), ("target", target, Tensor),
                               ("reduction", reduction, str))
        weights, biases, acts = plan
        return ops._mlp_nll(x, weights, biases, target, acts, reduction)

    def fit(self, X: Tensor, y: Tensor, optimizer, epochs: int = 1, batch_size: int = 1, shuffle: bool = True,
            generator: torch.Generator | None = None, callback=None, callback_every: int | None = None) -> list[float]:
        """Trains on ``X`` ``(n, in)`` and ``y`` ``(n,)`` or ``(n, out)``, each epoch one native call:
        :func:`fastffnn.optim.fit`, which says what it runs. Returns each epoch's mean loss."""
        from . import optim

        return optim.fit(self, X, y, optimizer, epochs, batch_size, shuffle, generator, callback, callback_every)

    @classmethod
    def from_module(cls, m: nn.Module) -> "FastMLP":
        """A FastMLP with the weights of an ``nn.Sequential`` classifier or of the lecture's FFNN.

        Accepted: ``nn.Sequential(Linear, act, Linear, act, ..., Linear)`` with
        acts among nn.Tanh, nn.ReLU, nn.Sigmoid and an optional final
        ``Softmax`` or ``LogSoftmax`` over the last dim; or a module with
        ``V``, ``g`` and ``W`` like the lecture's FFNN. Anything else raises
        ``ValueError`` naming the layer that did not fit.
        """
        if isinstance(m, nn.Sequential):
            layers = list(m)
            if layers and isinstance(layers[-1], (nn.Softmax, nn.LogSoftmax)):
                if layers[-1].dim not in (-1, None):
                    raise ValueError(f"fastffnn.FastMLP.from_module: layer {len(layers) - 1} "
                                     f"({type(layers[-1]).__name__}) must be over the last dim (dim=-1), "
                                     f"got dim={layers[-1].dim}")
                layers = layers[:-1]
        elif all(hasattr(m, name) for name in ("V", "g", "W")):
            layers = [m.V, m.g, m.W]
        else:
            raise ValueError("fastffnn.FastMLP.from_module: expected an nn.Sequential of Linear and activation "
                             f"layers or the lecture's FFNN, got {type(m).__name__}")
        if not layers:
            raise ValueError("fastffnn.FastMLP.from_module: the nn.Sequential has no layers")
        linears, acts = layers[0::2], layers[1::2]
        for i, layer in enumerate(layers):
            if i % 2 == 0 and type(layer) is not nn.Linear:
                raise ValueError(f"fastffnn.FastMLP.from_module: layer {i} must be nn.Linear, got {type(layer).__name__}")
            if i % 2 == 1 and type(layer) not in _ACTIVATION_NAMES:
                raise ValueError(f"fastffnn.FastMLP.from_module: layer {i} must be nn.Tanh, nn.ReLU or nn.Sigmoid, "
                                 f"got {type(layer).__name__}")
        if len(linears) != len(acts) + 1:
            raise ValueError(f"fastffnn.FastMLP.from_module: layer {len(layers) - 1} "
                             f"({type(layers[-1]).__name__}) must be the output nn.Linear")
        for i in range(1, len(linears)):
            if linears[i].in_features != linears[i - 1].out_features:
                raise ValueError(f"fastffnn.FastMLP.from_module: layer {2 * i} takes {linears[i].in_features} "
                                 f"inputs but layer {2 * i - 2} gives {linears[i - 1].out_features}")
        with_bias = {lin.bias is not None for lin in linears}
        if len(with_bias) != 1:
            raise ValueError("fastffnn.FastMLP.from_module: the Linear layers must all have a bias or all have none")
        sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
        w0 = linears[0].weight
        fast = cls(sizes, [_ACTIVATION_NAMES[type(a)] for a in acts], bias=with_bias.pop(), device=w0.device,
                   dtype=w0.dtype)
        with torch.no_grad():
            for i, lin in enumerate(linears):
                fast[2 * i].load_state_dict(lin.state_dict())
        return fast
