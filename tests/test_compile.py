"""torch.compile(fullgraph=True) traces the fused ops (through their fake kernels) without a graph break."""

from __future__ import annotations

import torch

import fastffnn
from helpers import input_of


def test_compiled_forward_and_loss_match_eager():
    torch._dynamo.reset()
    model = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    x = input_of((4, 7), requires_grad=False)
    y = torch.randint(0, 5, (4,))

    def loss_fn(x, y):
        return model.nll_loss(x, y) - torch.log(model(x)).mean()

    compiled = torch.compile(loss_fn, fullgraph=True)  # fullgraph: any graph break raises
    compiled(x, y).backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_fn(x, y).backward()
    for a, b in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))
