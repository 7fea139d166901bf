"""Ops called from 4 Python threads at once give the results they give alone."""

from __future__ import annotations

import threading

import torch

import fastffnn
from fastffnn import reference as ref


def _work(seed: int):
    g = torch.Generator().manual_seed(seed)
    batch = 1 if seed % 2 else 33
    x = torch.randn(batch, 40, generator=g, dtype=torch.float64)
    params = [torch.randn(30, 40, generator=g, dtype=torch.float64) / 6, torch.randn(30, generator=g, dtype=torch.float64),
              torch.randn(7, 30, generator=g, dtype=torch.float64) / 5, torch.randn(7, generator=g, dtype=torch.float64)]
    params = [p.requires_grad_() for p in params]
    y = torch.randint(0, 7, (batch,), generator=g)
    return x, params, y


def _compute(x, params, y):
    loss = fastffnn.ffnn_nll(x, *params, y)
    grads = torch.autograd.grad(loss, params)
    probs = fastffnn.ffnn(x, *params).detach()
    return [loss.detach(), probs, *grads]


def test_four_threads_at_once():
    inputs = [_work(seed) for seed in range(4)]
    expected = [[r.detach() for r in _compute(ref_x, ref_p, ref_y)] for ref_x, ref_p, ref_y in inputs]
    truth = []
    for x, params, y in inputs:  # and both against stock PyTorch
        loss = ref.ffnn_nll(x, *params, y)
        truth.append([loss.detach(), ref.ffnn(x, *params).detach(), *torch.autograd.grad(loss, params)])
    failures: list[str] = []
    start = threading.Barrier(4)

    def run(i):
        try:
            start.wait()
            for _ in range(50):
                got = _compute(*inputs[i])
                for a, b, c in zip(got, expected[i], truth[i]):
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
                    torch.testing.assert_close(a, c)
        except Exception as e:  # collected and reported by the main thread
            failures.append(f"thread {i}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not failures, failures[0]


def test_four_threads_training_their_own_models():
    x = torch.randn(16, 12)
    y = torch.randint(0, 3, (16,))
    models = [fastffnn.FastFFNN(12, 8, 3) for _ in range(4)]
    twins = [fastffnn.FastFFNN(12, 8, 3) for _ in range(4)]
    for m, t in zip(models, twins):
        t.load_state_dict(m.state_dict())
    for t in twins:  # alone, one after another
        opt = fastffnn.optim.Adam(t.parameters(), lr=1e-2)
        for i in range(40):
            t.train_step(x[i % 16], y[i % 16], opt)

    def train(m):
        opt = fastffnn.optim.Adam(m.parameters(), lr=1e-2)
        for i in range(40):
            m.train_step(x[i % 16], y[i % 16], opt)

    threads = [threading.Thread(target=train, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for m, t in zip(models, twins):
        for a, b in zip(m.parameters(), t.parameters()):
            assert torch.equal(a, b)  # batch-1 steps are fastffnn's own loops: the same bits
