"""Stock-PyTorch definitions of every fastffnn op, and of the lecture's model and loss.

These are the references the test suite and ``python -m fastffnn`` check the
native kernels against (in float64), and the exact semantics each op promises.
They take the same arguments as the functions in :mod:`fastffnn.ops`.
:class:`LectureFFNN` and :func:`lecture_loss` are the stock peers that
``python -m fastffnn bench`` and ``train --compare`` run against FastFFNN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def linear_act(input: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str = "tanh") -> Tensor:
    return ACTIVATIONS[activation](F.linear(input, weight, bias))


def linear_softmax(input: Tensor, weight: Tensor, bias: Tensor | None = None, log: bool = False) -> Tensor:
    z = F.linear(input, weight, bias)
    return F.log_softmax(z, dim=-1) if log else F.softmax(z, dim=-1)


def softmax_nll(logits: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    classes = logits.shape[-1]
    lead = logits.shape[:-1]
    if target.is_floating_point():
        flat_target = target.reshape(-1, classes)
    else:
        flat_target = target.reshape(-1)
    loss = F.cross_entropy(logits.reshape(-1, classes), flat_target, reduction=reduction)
    return loss.reshape(lead) if reduction == "none" else loss


def ffnn(
    input: Tensor,
    V_weight: Tensor,
    V_bias: Tensor | None,
    W_weight: Tensor,
    W_bias: Tensor | None,
    activation: str = "tanh",
    log: bool = False,
) -> Tensor:
    return linear_softmax(linear_act(input, V_weight, V_bias, activation), W_weight, W_bias, log)


def ffnn_nll(
    input: Tensor,
    V_weight: Tensor,
    V_bias: Tensor | None,
    W_weight: Tensor,
    W_bias: Tensor | None,
    target: Tensor,
    activation: str = "tanh",
    reduction: str = "mean",
) -> Tensor:
    logits = F.linear(linear_act(input, V_weight, V_bias, activation), W_weight, W_bias)
    return softmax_nll(logits, target, reduction)


def _hidden(input: Tensor, weights, biases, activations) -> Tensor:
    for w, b, act in zip(weights[:-1], biases[:-1], activations):
        input = linear_act(input, w, b, act)
    return input


def mlp(input: Tensor, weights, biases, activations, log: bool = False) -> Tensor:
    return linear_softmax(_hidden(input, weights, biases, activations), weights[-1], biases[-1], log)


def mlp_nll(input: Tensor, weights, biases, target: Tensor, activations, reduction: str = "mean") -> Tensor:
    logits = F.linear(_hidden(input, weights, biases, activations), weights[-1], biases[-1])
    return softmax_nll(logits, target, reduction)


class LectureFFNN(nn.Module):
    """The lecture's FFNN, with the softmax over the last (class) dim so that it also takes batches."""

    def __init__(self, inp: int, hid: int, out: int, activation: str = "tanh"):
        super().__init__()
        self.V = nn.Linear(inp, hid)
        self.g = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]()
        self.W = nn.Linear(hid, out)
        self.softmax = nn.Softmax(dim=-1)

    def logits(self, x: Tensor) -> Tensor:
        return self.W(self.g(self.V(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.softmax(self.logits(x))


def lecture_loss(probs: Tensor, gold: Tensor) -> Tensor:
    """The lecture's ``neg(log(probs)) . gold`` for one example; its mean over the rows of a batch."""
    if probs.dim() == 1:
        return torch.neg(torch.log(probs)).dot(gold)
    return torch.neg(torch.log(probs)).mul(gold).sum(-1).mean()
