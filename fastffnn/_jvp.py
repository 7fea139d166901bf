"""Forward-mode derivatives (jvp) of the fused ops, written out with stock tensor ops.

Each function takes the primal values the op saved (inputs and outputs) and
the inputs' tangents (None where an input has none) and returns the output's
tangent. The formulas use saved outputs rather than re-running the forward:

* linear:          dz = dx W^T + x dW^T + db
* activation:      dh = g'(z) dz, with g' from the output h: tanh 1 - h^2,
                   relu [h > 0], sigmoid h (1 - h)
* softmax p:       dp = p (dz - <p, dz>);  log_softmax: dz - <p, dz>
* cross-entropy of a row against target mass y (one-hot for an index):
                   loss = sum(y) lse(z) - <y, z>, so
                   dloss = sum(y) <p, dz> - <y, dz> - <dy, log p>
                   then summed or averaged over the rows as the reduction says.

They are plain tensor code (no autograd inside), so they run under
torch.autograd.forward_ad, where a nested forward-mode transform would not.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _add(*terms: Tensor | None) -> Tensor | None:
    out = None
    for t in terms:
        if t is not None:
            out = t if out is None else out + t
    return out


def linear(x: Tensor, weight: Tensor, dx: Tensor | None, dweight: Tensor | None, dbias: Tensor | None) -> Tensor | None:
    return _add(None if dx is None else dx @ weight.T, None if dweight is None else x @ dweight.T, dbias)


def activation(h: Tensor, dz: Tensor | None, name: str) -> Tensor | None:
    if dz is None:
        return None
    if name == "tanh":
        return dz * (1 - h * h)
    if name == "relu":
        return dz * (h > 0).to(dz.dtype)
    return dz * h * (1 - h)


def softmax(out: Tensor, dz: Tensor | None, log: bool) -> Tensor | None:
    if dz is None:
        return None
    p = out.exp() if log else out
    mean = (p * dz).sum(-1, keepdim=True)
    return dz - mean if log else p * (dz - mean)


def nll(log_p: Tensor, target: Tensor, dz: Tensor | None, dtarget: Tensor | None, reduction: str) -> Tensor:
    """Tangent of the cross-entropy of rows with log-probabilities ``log_p`` (shape (..., classes))."""
    row = torch.zeros(log_p.shape[:-1], dtype=log_p.dtype, device=log_p.device)
    if dz is not None:
        p_dot = (log_p.exp() * dz).sum(-1)
        if target.is_floating_point():
            row = row + target.sum(-1) * p_dot - (target * dz).sum(-1)
        else:
            row = row + p_dot - dz.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    if dtarget is not None:
        row = row - (dtarget * log_p).sum(-1)
    if reduction == "none":
        return row
    total = row.sum()
    return total if reduction == "sum" else total / max(row.numel(), 1)


def log_probs_from_lse(logits: Tensor, lse: Tensor) -> Tensor:
    return logits - lse.to(logits.dtype).unsqueeze(-1)
