"""A quick check of every op against stock PyTorch, for ``python -m fastffnn``.

Each op runs on small random float64 inputs, forward and backward, and is
compared with its definition in :mod:`fastffnn.reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops, reference


@dataclass
class CheckResult:
    op: str
    max_abs_error: float
    ok: bool


def _cases(device: torch.device, dtype: torch.dtype):
    def rand(*shape, grad=True):
        return torch.randn(*shape, device=device, dtype=dtype).requires_grad_(grad)

    x, Vw, Vb, Ww, Wb = rand(9, 7), rand(13, 7), rand(13), rand(5, 13), rand(5)
    index = torch.randint(0, 5, (9,), device=device)
    probs = torch.softmax(torch.randn(9, 5, device=device, dtype=dtype), -1)
    net = (x, Vw, Vb, Ww, Wb)
    for act in ("tanh", "relu", "sigmoid"):
        yield f"linear_act[{act}]", "linear_act", (x, Vw, Vb, act)
    yield "linear_softmax", "linear_softmax", (x, Vw, Vb, False)
    yield "linear_softmax[log]", "linear_softmax", (x, Vw, Vb, True)
    yield "softmax_nll[index]", "softmax_nll", (rand(9, 5), index, "mean")
    yield "softmax_nll[probs]", "softmax_nll", (rand(9, 5), probs, "sum")
    yield "ffnn", "ffnn", (*net, "tanh", False)
    yield "ffnn[1-D, log]", "ffnn", (rand(7), Vw, Vb, Ww, Wb, "relu", True)
    yield "ffnn_nll[index]", "ffnn_nll", (*net, index, "sigmoid", "mean")
    yield "ffnn_nll[probs]", "ffnn_nll", (*net, probs, "tanh", "none")
    # the network of any depth: 0 hidden layers (softmax regression), 1 and 3
    for sizes, acts in (((7, 5), []), ((7, 13, 5), ["relu"]), ((7, 13, 11, 6, 5), ["tanh", "relu", "sigmoid"])):
        weights = [rand(o, i) for i, o in zip(sizes[:-1], sizes[1:])]
        biases = [rand(o) for o in sizes[1:]]
        depth = len(acts)
        yield f"mlp[depth {depth}]", "mlp", (x, weights, biases, acts, False)
        yield f"mlp_nll[depth {depth}]", "mlp_nll", (x, weights, biases, index, acts, "mean")


def run(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64, tol: float = 1e-8) -> list[CheckResult]:
    """Checks each op's output and input gradients; returns one result per case."""
    torch.manual_seed(0)
    results = []
    for label, name, args in _cases(torch.device(device), dtype):
        ours = getattr(ops, name)(*args)
        theirs = getattr(reference, name)(*args)
        flat = [t for a in args for t in (a if isinstance(a, list) else [a])]
        leaves = [a for a in flat if isinstance(a, torch.Tensor) and a.requires_grad]
        seed = torch.randn_like(ours)
        err = (ours - theirs).abs().max().item()
        for a, b in zip(torch.autograd.grad(ours, leaves, seed), torch.autograd.grad(theirs, leaves, seed)):
            err = max(err, (a - b).abs().max().item())
        results.append(CheckResult(label, err, err <= tol))
    return results
