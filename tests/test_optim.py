"""fastffnn.optim.Adam against torch.optim.Adam, and the one-call training step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastffnn
from fastffnn import FastFFNN
from lecture import FFNN

CONFIGS = [
    dict(lr=1e-3),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.01, maximize=True, amsgrad=True, weight_decay=0.01),
]


def pair(dtype=torch.float64, inp=12, hid=16, out=3, bias=True):
    model = FastFFNN(inp, hid, out, bias=bias, dtype=dtype)
    return model, copy.deepcopy(model)


def close(a_params, b_params, tol):
    for a, b in zip(a_params, b_params):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_adam_matches_torch_adam_step_after_step(config, dtype, tol):
    ours_model, ref_model = pair(dtype)
    ours = fastffnn.optim.Adam(ours_model.parameters(), **config)
    ref = torch.optim.Adam(ref_model.parameters(), **config)
    for _ in range(50):
        x = torch.randn(8, 12, dtype=dtype)
        y = torch.randint(0, 3, (8,))
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            model.nll_loss(x, y).backward()
            opt.step()
        close(ours_model.parameters(), ref_model.parameters(), tol)
    for p, q in zip(ours_model.parameters(), ref_model.parameters()):
        for key in ref.state[q]:
            torch.testing.assert_close(ours.state[p][key], ref.state[q][key], rtol=tol, atol=tol)


def test_state_dicts_move_both_ways():
    a_model, b_model = pair()
    a = fastffnn.optim.Adam(a_model.parameters(), lr=0.01, amsgrad=True)
    b = torch.optim.Adam(b_model.parameters(), lr=0.01, amsgrad=True)
    x, y = torch.randn(8, 12, dtype=torch.float64), torch.randint(0, 3, (8,))
    for model, opt in ((a_model, a), (b_model, b)):
        for _ in range(3):
            opt.zero_grad()
            model.nll_loss(x, y).backward()
            opt.step()
    # ours -> torch, and torch -> ours; then both take the same next steps
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # load_state_dict may share tensors
    b_model.load_state_dict(a_model.state_dict())
    c = fastffnn.optim.Adam(a_model.parameters(), lr=0.5)
    c.load_state_dict(copy.deepcopy(b.state_dict()))
    assert c.param_groups[0]["lr"] == 0.01 and c.param_groups[0]["amsgrad"]
    for _ in range(5):
        for model, opt in ((a_model, c), (b_model, b)):
            opt.zero_grad()
            model.nll_loss(x, y).backward()
            opt.step()
    close(a_model.parameters(), b_model.parameters(), 1e-12)


def test_capturable_keeps_each_counter_on_its_parameters_device():
    """Adam(capturable=True), as torch.optim.Adam's: each step counter on its parameter's device (here the CPU, where
    nothing is captured, so the steps are those of capturable=False, bit for bit), the flag kept in the param group
    and its state dict; a torch.optim.Adam state dict, which has the flag, loads into it; an older one without the
    flag loads as capturable=False."""
    model, _ = pair()
    twin = copy.deepcopy(model)
    a = fastffnn.optim.Adam(model.parameters(), lr=0.01, capturable=True)
    b = fastffnn.optim.Adam(twin.parameters(), lr=0.01)
    x, y = torch.randn(4, 12, dtype=torch.float64), torch.randint(0, 3, (4,))
    for _ in range(3):
        a.train_step(model, x, y)
        b.train_step(twin, x, y)
    assert [torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters())] == [True] * 4
    assert a.param_groups[0]["capturable"] and a.state_dict()["param_groups"][0]["capturable"]
    assert {str(s["step"].device) for s in a.state.values()} == {"cpu"}
    assert [float(s["step"]) for s in a.state.values()] == [3.0] * 4
    state = copy.deepcopy(b.state_dict())
    del state["param_groups"][0]["capturable"]
    c = fastffnn.optim.Adam(model.parameters(), capturable=True)
    c.load_state_dict(state)
    assert c.param_groups[0]["capturable"] is False
    reference = torch.optim.Adam(twin.parameters(), lr=0.01)
    reference.load_state_dict(copy.deepcopy(b.state_dict()))
    c.load_state_dict(copy.deepcopy(reference.state_dict()))
    assert c.param_groups[0]["capturable"] is False and [float(s["step"]) for s in c.state.values()] == [3.0] * 4


def test_params_without_grad_and_closure():
    model, _ = pair()
    model.V.weight.requires_grad_(False)
    before = model.V.weight.clone()
    opt = fastffnn.optim.Adam(model.parameters())
    x, y = torch.randn(4, 12, dtype=torch.float64), torch.randint(0, 3, (4,))

    def closure():
        opt.zero_grad()
        loss = model.nll_loss(x, y)
        loss.backward()
        return loss

    assert torch.isfinite(opt.step(closure))
    assert torch.equal(model.V.weight, before)
    assert len(opt.state) == 3


def test_bad_arguments():
    model, _ = pair()
    with pytest.raises(ValueError, match="invalid learning rate"):
        fastffnn.optim.Adam(model.parameters(), lr=-1)
    with pytest.raises(ValueError, match="foreach=True is not supported"):
        fastffnn.optim.Adam(model.parameters(), foreach=True)
    with pytest.raises(ValueError, match="fused=True is not supported"):
        fastffnn.optim.Adam(model.parameters(), fused=True)
    opt = fastffnn.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="exactly the model's parameters"):
        opt.train_step(FastFFNN(12, 16, 3, dtype=torch.float64), torch.randn(12, dtype=torch.float64),
                       torch.tensor(0))
    with pytest.raises(TypeError, match="needs a fastffnn.optim.Adam"):
        model.train_step(torch.randn(12, dtype=torch.float64), torch.tensor(0), torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        model.train_step(torch.randn(3, 12, dtype=torch.float64), torch.tensor([0, 1, 2]), opt, reduction="none")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("lead", [(), (1,), (5,)], ids=["1-D", "one-row", "batch"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_train_step_is_the_usual_step(config, bias, activation, lead, kind):
    # One example takes the direct-loop path (one_row_step), a batch the general one.
    model = FastFFNN(12, 16, 3, activation=activation, bias=bias, dtype=torch.float64)
    twin = copy.deepcopy(model)
    opt = fastffnn.optim.Adam(model.parameters(), **config)
    opt_twin = torch.optim.Adam(twin.parameters(), **config)
    for _ in range(20):
        x = torch.randn(*lead, 12, dtype=torch.float64)
        y = torch.randint(0, 3, lead)
        if kind == "probs":
            y = torch.softmax(torch.randn(*lead, 3, dtype=torch.float64), -1)
        loss = model.train_step(x, y, opt, reduction="sum")
        opt_twin.zero_grad()
        expected = twin.nll_loss(x, y, reduction="sum")
        expected.backward()
        opt_twin.step()
        torch.testing.assert_close(loss, expected.detach())
    close(model.parameters(), twin.parameters(), 1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_lecture_loop_with_the_one_line_change(dtype, tol):
    """The lecture's per-example loop, with its step replaced by train_step, ends where stock PyTorch ends."""
    torch.manual_seed(0)
    stock = FFNN(12, 16, 3).to(dtype)
    nn.init.xavier_uniform_(stock.V.weight)
    fast = FastFFNN.from_module(stock)
    xs = torch.randn(30, 12, dtype=dtype)
    golds = nn.functional.one_hot(torch.randint(0, 3, (30,)), 3).to(dtype)
    stock_opt = torch.optim.Adam(stock.parameters(), lr=0.01)
    fast_opt = fastffnn.optim.Adam(fast.parameters(), lr=0.01)
    for epoch in range(3):
        for input, gold_label in zip(xs, golds):
            stock.zero_grad()
            probs = stock.forward(input)
            loss = torch.neg(torch.log(probs)).dot(gold_label)
            loss.backward()
            stock_opt.step()
            fast_loss = fast.train_step(input, gold_label, fast_opt)  # the one changed line
            torch.testing.assert_close(fast_loss, loss.detach(), rtol=tol, atol=tol)
    close(fast.parameters(), stock.parameters(), tol)


def test_opcheck_optimizer_ops():
    fastffnn.ensure_loaded()
    model, _ = pair()
    params = [p.detach().clone() for p in model.parameters()]
    grads = [torch.randn_like(p) for p in params]
    state = lambda: [torch.rand_like(p) for p in params]  # noqa: E731
    steps = [torch.tensor(3.0) for _ in params]
    torch.library.opcheck(torch.ops.fastffnn.adam_step_.default,
                          (params, grads, state(), state(), state(), steps, 0.01, 0.9, 0.999, 1e-8, 0.0, True, False,
                           False))
    x, y = torch.randn(5, 12, dtype=torch.float64), torch.randint(0, 3, (5,))
    torch.library.opcheck(torch.ops.fastffnn.ffnn_nll_adam_step_.default,
                          (x, y, params, True, state(), state(), [], [torch.tensor(1.0) for _ in params], "tanh",
                           "mean", 0.01, 0.9, 0.999, 1e-8, 0.0, False, False, False))
    lr = torch.tensor(0.01, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fastffnn.adam_step_.tensor_lr,
                          (params, grads, state(), state(), state(), steps, lr, 0.9, 0.999, 1e-8, 0.0, True, False,
                           False))
    torch.library.opcheck(torch.ops.fastffnn.ffnn_nll_adam_step_.tensor_lr,
                          (x, y, params, True, state(), state(), [], [torch.tensor(1.0) for _ in params], "tanh",
                           "mean", lr, 0.9, 0.999, 1e-8, 0.0, False, False, False))
    # the network of any depth, here the same two layers as a list, with amsgrad
    for overload, rate in (("default", 0.01), ("tensor_lr", lr)):
        torch.library.opcheck(getattr(torch.ops.fastffnn.mlp_nll_adam_step_, overload),
                              (x, y, params, True, state(), state(), state(), [torch.tensor(1.0) for _ in params],
                               ["tanh"], "sum", rate, 0.9, 0.999, 1e-8, 0.1, True, False, False))


@pytest.mark.parametrize("how", ["step", "train_step"])
def test_a_tensor_lr_is_the_float_lr(how):
    ours_model, ref_model = pair()
    ours = fastffnn.optim.Adam(ours_model.parameters(), lr=torch.tensor(0.01, dtype=torch.float64), amsgrad=True)
    ref = torch.optim.Adam(ref_model.parameters(), lr=0.01, amsgrad=True)
    for lead in ((), (8,)):
        for _ in range(3):
            x, y = torch.randn(*lead, 12, dtype=torch.float64), torch.randint(0, 3, lead)
            if how == "step":
                ours.zero_grad()
                ours_model.nll_loss(x, y).backward()
                ours.step()
            else:
                ours_model.train_step(x, y, ours)
            ref.zero_grad()
            ref_model.nll_loss(x, y).backward()
            ref.step()
    close(ours_model.parameters(), ref_model.parameters(), 1e-12)
    with pytest.raises(ValueError, match="a Tensor lr must be a floating CPU tensor with one element"):
        fastffnn.optim.Adam(ours_model.parameters(), lr=torch.tensor([0.1, 0.2]))


# The smallest normal float32; Adam's m decays by beta1 a step where the gradient is zero, into subnormals.
TINY32 = torch.finfo(torch.float32).tiny


def _decayed_adam_states(opt_cls, eps):
    """One step with a gradient, then 900 with a zero one: m falls by 0.9 ** 900 ~ 1e-41, into subnormals."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(37))
    opt = opt_cls([p], lr=1e-3, eps=eps)
    p.grad = torch.rand(37) * 1e-3 + 1e-4
    opt.step()
    p.grad = torch.zeros(37)
    for _ in range(900):
        opt.step()
    return p.detach(), opt.state[p]["exp_avg"]


def test_adam_flushes_subnormal_states_where_eps_bounds_the_effect():
    ref_p, ref_m = _decayed_adam_states(torch.optim.Adam, 1e-8)
    ours_p, ours_m = _decayed_adam_states(fastffnn.optim.Adam, 1e-8)
    # torch keeps m as subnormals; fastffnn's CPU update never makes one (csrc/cpu/optim.h): m becomes 0 where a
    # fused multiply-add gives m - 0.1 m a subnormal, and stays just above the smallest normal where a separate
    # multiply flushes the 0.1 m to zero (the -O1 sanitizer build)
    assert ((ref_m.abs() > 0) & (ref_m.abs() < TINY32)).all()
    assert ((ours_m == 0) | (ours_m.abs() >= TINY32)).all() and (ours_m.abs() < 16 * TINY32).all()
    # and the parameters do not notice: the difference is below lr * 1.9e-37 / eps a step
    torch.testing.assert_close(ours_p, ref_p, rtol=1e-6, atol=0)


def test_adam_keeps_subnormal_states_below_the_flush_eps():
    # eps of 1e-20 would let a flushed m matter, so nothing is flushed: m follows torch's
    ref_p, ref_m = _decayed_adam_states(torch.optim.Adam, 1e-20)
    ours_p, ours_m = _decayed_adam_states(fastffnn.optim.Adam, 1e-20)
    assert ((ours_m.abs() > 0) & (ours_m.abs() < TINY32)).all()
    torch.testing.assert_close(ours_m, ref_m, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours_p, ref_p, rtol=1e-6, atol=0)


@pytest.mark.parametrize("flush_before", [False, True])
def test_the_callers_subnormal_mode_is_restored(flush_before):
    # The updates flush subnormals on the thread that runs them and must hand back the caller's mode, whatever it is.
    sub = torch.full((64,), 1e-39)
    model = FastFFNN(12, 16, 3)
    x, y = torch.randn(40, 12), torch.randint(0, 3, (40,))
    torch.set_flush_denormal(flush_before)
    try:
        for opt in (fastffnn.optim.Adam(model.parameters()), fastffnn.optim.SGD(model.parameters(), lr=0.1,
                                                                               momentum=0.9)):
            model.train_step(x[0], y[0], opt)
            model.train_step(x[:8], y[:8], opt)
            model.fit(x, y, opt, epochs=1, batch_size=1)
            opt.zero_grad()
            model.nll_loss(x, y).backward()
            opt.step()
            assert ((sub * 1.0) == 0).all() == flush_before
    finally:
        torch.set_flush_denormal(False)  # torch's default
