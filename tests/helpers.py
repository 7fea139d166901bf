"""Random operands and comparison helpers for the tests, float64 by default.

Every test draws fresh random values (never zeros), scaled so that the
logits are O(1) and every gradient is exercised.
"""

from __future__ import annotations

import torch


def rand(*shape, dtype=torch.float64, scale=1.0, requires_grad=False):
    t = (torch.randn(*shape, dtype=dtype) * scale).requires_grad_(requires_grad)
    return t


def layer(out_features, in_features, bias=True, dtype=torch.float64, requires_grad=True):
    """(weight, bias) like a freshly initialised nn.Linear, but normal."""
    w = rand(out_features, in_features, dtype=dtype, scale=1.0 / max(in_features, 1) ** 0.5,
             requires_grad=requires_grad)
    b = rand(out_features, dtype=dtype, scale=0.5, requires_grad=requires_grad) if bias else None
    return w, b


def input_of(shape, layout="contiguous", dtype=torch.float64, requires_grad=True):
    """An input of `shape` in a given memory layout: contiguous, or a strided view."""
    if layout == "contiguous":
        return rand(*shape, dtype=dtype, requires_grad=requires_grad)
    if layout == "noncontiguous":
        # every other column of a wider tensor: the last dim has stride 2
        base = rand(*shape[:-1], 2 * shape[-1], dtype=dtype)
        return base[..., ::2].detach().requires_grad_(requires_grad)
    if layout == "transposed":
        base = rand(*reversed(shape), dtype=dtype)
        return base.permute(*reversed(range(len(shape)))).detach().requires_grad_(requires_grad)
    raise ValueError(layout)


def targets(kind, lead, classes, dtype=torch.float64):
    """A loss target: class indices, one-hot rows, or random probabilities."""
    idx = torch.randint(0, classes, lead)
    if kind == "index":
        return idx
    if kind == "onehot":
        return torch.nn.functional.one_hot(idx, classes).to(dtype)
    if kind == "probs":
        return torch.softmax(torch.randn(*lead, classes, dtype=dtype), dim=-1)
    raise ValueError(kind)


def grads(out, inputs, seed_grad=None):
    """Gradients of `out` (weighted by a random seed gradient) w.r.t. the inputs that require grad."""
    if seed_grad is None:
        seed_grad = torch.randn_like(out)
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, wanted, seed_grad, allow_unused=False), seed_grad


def assert_matches(ours, ref, inputs, dtype=torch.float64, rtol=None, atol=None):
    """Forward values and every gradient of `ours` match the stock `ref`."""
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol, equal_nan=True)
    if not any(t is not None and t.requires_grad for t in inputs):
        return
    g_ours, seed = grads(ours, inputs)
    g_ref, _ = grads(ref, inputs, seed)
    for i, (a, b) in enumerate(zip(g_ours, g_ref)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"gradient {i}: {m}")
