"""Property-based tests (hypothesis): every op and the module agree with stock PyTorch, forward and backward,
over random shapes (degenerate ones included), dtypes, values, strides and bias on or off.

The example budget is fixed (``max_examples`` per test, derandomized), so CI runs the same cases every time.
"""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastffnn
from fastffnn import reference as ref

BUDGET = settings(max_examples=40, deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TOL = {torch.float32: dict(rtol=2e-4, atol=2e-5), torch.float64: dict(rtol=1e-7, atol=1e-9)}


@st.composite
def cases(draw):
    lead = draw(st.sampled_from([(), (0,), (1,), (2,), (7,), (33,), (2, 3), (1, 0), (3, 1, 2)]))
    dims = (draw(st.integers(1, 40)), draw(st.integers(1, 40)), draw(st.integers(1, 12)))
    return dict(
        lead=lead, dims=dims,
        dtype=draw(st.sampled_from([torch.float32, torch.float64])),
        bias=draw(st.booleans()),
        activation=draw(st.sampled_from(["tanh", "relu", "sigmoid"])),
        scale=draw(st.sampled_from([0.1, 1.0, 4.0])),
        strided=draw(st.sampled_from(["contiguous", "every-other", "transposed-weights"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def _tensors(case):
    g = torch.Generator().manual_seed(case["seed"])
    dtype, lead, scale = case["dtype"], case["lead"], case["scale"]
    in_f, hid, out = case["dims"]

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    if case["strided"] == "every-other":
        x = rand(*lead, 2 * in_f)[..., ::2] * scale
    else:
        x = rand(*lead, in_f) * scale
    if case["strided"] == "transposed-weights":
        Vw, Ww = rand(in_f, hid).T / in_f ** 0.5, rand(hid, out).T / hid ** 0.5
    else:
        Vw, Ww = rand(hid, in_f) / in_f ** 0.5, rand(out, hid) / hid ** 0.5
    Vb, Wb = (rand(hid), rand(out)) if case["bias"] else (None, None)
    y_index = torch.randint(0, out, lead, generator=g)
    y_probs = torch.softmax(rand(*lead, out), -1)
    leaves = [t.detach().requires_grad_() for t in (x, Vw, Vb, Ww, Wb) if t is not None]
    it = iter(leaves)
    x, Vw, Vb, Ww, Wb = (next(it) if t is not None else None for t in (x, Vw, Vb, Ww, Wb))
    return (x, Vw, Vb, Ww, Wb), leaves, y_index, y_probs


def _agree(ours, theirs, leaves, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(ours, theirs, **tol)
    if ours.numel() == 0:
        return
    seed = torch.randn_like(theirs)
    g_ours = torch.autograd.grad(ours, leaves, seed, allow_unused=True)
    g_ref = torch.autograd.grad(theirs, leaves, seed, allow_unused=True)
    for a, b in zip(g_ours, g_ref):
        if b is None:
            assert a is None or not a.any()
        else:
            torch.testing.assert_close(a, b, **tol)


@BUDGET
@given(cases(), st.booleans())
def test_ffnn(case, log):
    params, leaves, _, _ = _tensors(case)
    _agree(fastffnn.ffnn(*params, activation=case["activation"], log=log),
           ref.ffnn(*params, activation=case["activation"], log=log), leaves, case["dtype"])


@BUDGET
@given(cases(), st.sampled_from(["index", "probs"]), st.sampled_from(["mean", "sum", "none"]))
def test_ffnn_nll(case, kind, reduction):
    params, leaves, y_index, y_probs = _tensors(case)
    y = y_index if kind == "index" else y_probs
    if reduction == "mean" and y_index.numel() == 0:
        reduction = "sum"  # the mean of no examples is NaN in both; nothing to compare
    _agree(fastffnn.ffnn_nll(*params, y, activation=case["activation"], reduction=reduction),
           ref.ffnn_nll(*params, y, activation=case["activation"], reduction=reduction), leaves, case["dtype"])


@BUDGET
@given(cases(), st.booleans())
def test_linear_act_and_linear_softmax(case, log):
    (x, Vw, Vb, _, _), leaves, _, _ = _tensors(case)
    _agree(fastffnn.linear_act(x, Vw, Vb, case["activation"]), ref.linear_act(x, Vw, Vb, case["activation"]),
           leaves, case["dtype"])
    _agree(fastffnn.linear_softmax(x, Vw, Vb, log), ref.linear_softmax(x, Vw, Vb, log), leaves, case["dtype"])


@BUDGET
@given(cases(), st.sampled_from(["index", "probs"]), st.sampled_from(["sum", "none"]))
def test_softmax_nll(case, kind, reduction):
    g = torch.Generator().manual_seed(case["seed"])
    out = case["dims"][2]
    z = (torch.randn(*case["lead"], out, generator=g, dtype=case["dtype"]) * case["scale"] * 10).requires_grad_()
    _, _, y_index, y_probs = _tensors(case)
    y = y_index if kind == "index" else y_probs
    _agree(fastffnn.softmax_nll(z, y, reduction), ref.softmax_nll(z, y, reduction), [z], case["dtype"])


@BUDGET
@given(cases())
def test_module_matches_the_lecture_model(case):
    in_f, hid, out = case["dims"]
    model = fastffnn.FastFFNN(in_f, hid, out, activation=case["activation"], bias=case["bias"], dtype=case["dtype"])
    stock = torch.nn.Sequential(model.V, type(model.g)(), model.W, torch.nn.Softmax(dim=-1))
    (x, *_), _, _, _ = _tensors(case)
    x = x.detach()
    _agree(model(x), stock(x), list(model.parameters()), case["dtype"])


@BUDGET
@given(cases(), st.sets(st.sampled_from(["V.weight", "V.bias", "W.weight", "W.bias"]), max_size=3),
       st.sampled_from([None, "fresh tensors", "empty dict"]), st.integers(0, 3))
def test_train_step_with_frozen_parameters_and_a_state_reset(case, frozen, reset, reset_at):
    # train_step against the documented equivalent with torch.optim.Adam, over
    # random shapes, any frozen subset of the parameters and an optimizer-state
    # reset at a random step; every update bumps the parameters' versions.
    import copy

    in_f, hid, out = case["dims"]
    dtype, lead = case["dtype"], case["lead"]
    if 0 in lead or len(lead) > 1:
        lead = (5,)
    torch.manual_seed(case["seed"])
    model = fastffnn.FastFFNN(in_f, hid, out, activation=case["activation"], bias=case["bias"], dtype=dtype)
    twin = copy.deepcopy(model)
    for m in (model, twin):
        for name, p in m.named_parameters():
            p.requires_grad_(name not in frozen)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(case["seed"])
    for step in range(4):
        if reset and step == reset_at:
            for o, m in ((opt, model), (ref, twin)):
                p = m.V.weight
                o.state[p] = {} if reset == "empty dict" else {
                    "step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        x = torch.randn(*lead, in_f, generator=g, dtype=dtype)
        y = torch.randint(0, out, lead, generator=g)
        versions = [p._version for p in model.parameters()]
        loss = model.train_step(x, y, opt)
        ref.zero_grad()
        want = twin.nll_loss(x, y)
        if want.requires_grad:  # with every parameter frozen, stock has nothing to differentiate, nor do we
            want.backward()
        ref.step()
        torch.testing.assert_close(loss, want.detach(), **TOL[dtype])
        for p, v in zip(model.parameters(), versions):
            assert (p._version > v) == p.requires_grad
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m, name=name: f"{name}: {m}")
