"""fastffnn.optim.SGD and fit: the training loop in native code.

References: torch.optim.SGD in float64 for the update; for fit, the Python
loop its docstring gives, over optimizer.train_step, which it must match bit
for bit (the same kernels, in the same order).
"""

from __future__ import annotations

import copy
import os
import signal
import threading

import pytest
import torch
from torch import nn

import fastffnn
from fastffnn import FastFFNN, FastMLP
from fastffnn.optim import SGD, Adam

SGD_CONFIGS = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.5, dampening=0.3, weight_decay=0.1, maximize=True),
]
OPTIMIZERS = [(Adam, dict(lr=0.01)), (Adam, dict(lr=0.01, amsgrad=True, weight_decay=0.1))] + [
    (SGD, c) for c in SGD_CONFIGS]


def _id(v):
    if isinstance(v, type):
        return v.__name__
    if isinstance(v, dict):
        return "-".join(f"{k}{val}" for k, val in v.items())
    return None


def make_model(kind, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    if kind == "ffnn":
        return FastFFNN(5, 4, 3, activation="sigmoid").to(dtype)
    return FastMLP([5, 4, 6, 3], activation=["tanh", "relu"], dtype=dtype)


def data(n=20, classes=3, probs=False, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    if probs:
        y = torch.softmax(torch.randn(n, classes, generator=g, dtype=dtype), -1)
    return X, y


def python_loop(model, opt, X, y, epochs, batch_size, generator, shuffle=True):
    """fit's documented equivalent; returns every step's loss."""
    n, losses = X.shape[0], []
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for batch in order.split(batch_size):
            if batch_size == 1:
                losses.append(opt.train_step(model, X[batch[0]], y[batch[0]]))
            else:
                losses.append(opt.train_step(model, X[batch], y[batch]))
    return torch.stack(losses)


def state_tensors(opt):
    return [t for s in opt.state.values() for t in s.values()]


def assert_same(a_model, a_opt, b_model, b_opt):
    for p, q in zip(a_model.parameters(), b_model.parameters()):
        assert torch.equal(p, q)
    a, b = state_tensors(a_opt), state_tensors(b_opt)
    assert len(a) == len(b) > 0 or a_opt.defaults.get("momentum", 1) == 0
    for s, t in zip(a, b):
        assert torch.equal(s, t)


# ---------------------------------------------------------------- SGD against torch.optim.SGD
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=_id)
@pytest.mark.parametrize("how", ["step", "train_step"])
def test_sgd_matches_torch_sgd(config, how):
    ours_model, ref_model = make_model("mlp"), make_model("mlp")
    ref_seq = nn.Sequential(*list(ref_model))  # stock modules, stock autograd
    ours, ref = SGD(ours_model.parameters(), **config), torch.optim.SGD(ref_seq.parameters(), **config)
    for lead in ((), (7,), (1,), ()):
        x, y = torch.randn(*lead, 5, dtype=torch.float64), torch.randint(0, 3, lead)
        ref.zero_grad()
        ref_loss = nn.functional.nll_loss(torch.log(ref_seq(x)).reshape(-1, 3), y.reshape(-1))
        ref_loss.backward()
        ref.step()
        if how == "step":
            ours.zero_grad()
            ours_model.nll_loss(x, y).backward()
            ours.step()
        else:
            loss = ours.train_step(ours_model, x, y)
            torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-12, atol=1e-12)
        for p, q in zip(ours_model.parameters(), ref_seq.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        for p, q in zip(ours_model.parameters(), ref_seq.parameters()):
            assert ours.state[p].keys() == ref.state[q].keys()
            for key in ref.state[q]:
                torch.testing.assert_close(ours.state[p][key], ref.state[q][key], rtol=1e-12, atol=1e-12)


def test_sgd_state_dict_loads_both_ways():
    config = dict(lr=0.05, momentum=0.9, nesterov=True)
    a, b = make_model("mlp"), make_model("mlp")
    ours, ref = SGD(a.parameters(), **config), torch.optim.SGD(b.parameters(), **config)
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 3, (6,))
    for model, opt in ((a, ours), (b, ref)):
        opt.zero_grad()
        model.nll_loss(x, y).backward()
        opt.step()
    # swap: each continues from the other's state, and both must stay together
    ours2, ref2 = SGD(a.parameters(), **config), torch.optim.SGD(b.parameters(), **config)
    ours2.load_state_dict(ref.state_dict())
    ref2.load_state_dict(ours.state_dict())
    for _ in range(2):
        for model, opt in ((a, ours2), (b, ref2)):
            opt.zero_grad()
            model.nll_loss(x, y).backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_sgd_strided_parameters_and_no_momentum_state():
    w = torch.randn(6, 4, dtype=torch.float64).t()  # a transposed parameter, as torch.optim accepts
    w_ref = w.detach().clone()
    p, q = nn.Parameter(w), nn.Parameter(w_ref)
    ours, ref = SGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([q], lr=0.1, momentum=0.9)
    for _ in range(3):
        g = torch.randn(4, 6, dtype=torch.float64)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    plain = SGD([nn.Parameter(torch.randn(3))], lr=0.1)
    plain.param_groups[0]["params"][0].grad = torch.randn(3)
    plain.step()
    assert all(len(s) == 0 for s in plain.state.values())  # torch.optim.SGD keeps nothing without a momentum


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0.1, nesterov=True), "nesterov"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (dict(lr=-1.0), "learning rate"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
    (dict(lr=0.1, foreach=True), "foreach"),
])
def test_sgd_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(make_model("mlp").parameters(), **kwargs)


def test_sgd_op_bad_input_names_the_list():
    fastffnn.ensure_loaded()
    p = [torch.randn(3, 2)]
    with pytest.raises(ValueError, match=r"momentum_buffers\[0\] must be a Float tensor of shape \[3, 2\]"):
        torch.ops.fastffnn.sgd_step_(p, [torch.randn(3, 2)], [torch.randn(2, 3)], [True], 0.1, 0.9, 0.0, 0.0, False,
                                     False)
    with pytest.raises(ValueError, match="1 of each expected with momentum=0.9"):
        torch.ops.fastffnn.sgd_step_(p, [torch.randn(3, 2)], [], [], 0.1, 0.9, 0.0, 0.0, False, False)


# ---------------------------------------------------------------- fit against the Python loop
@pytest.mark.parametrize("optimizer,config", OPTIMIZERS, ids=_id)
@pytest.mark.parametrize("kind", ["ffnn", "mlp"])
@pytest.mark.parametrize("batch_size", [1, 3, 7, 20, 64])
def test_fit_is_the_python_loop_bit_for_bit(optimizer, config, kind, batch_size):
    X, y = data()
    a, b = make_model(kind), make_model(kind)
    opt_a, opt_b = optimizer(a.parameters(), **config), optimizer(b.parameters(), **config)
    means = a.fit(X, y, opt_a, epochs=2, batch_size=batch_size, generator=torch.Generator().manual_seed(5))
    losses = python_loop(b, opt_b, X, y, 2, batch_size, torch.Generator().manual_seed(5))
    assert_same(a, opt_a, b, opt_b)
    # each epoch's mean over its examples of the loss their step computed
    per_epoch = -(-20 // batch_size)
    sizes = torch.tensor([len(c) for c in torch.arange(20).split(batch_size)], dtype=torch.float64)
    for e, mean in enumerate(means):
        expected = (losses[e * per_epoch:(e + 1) * per_epoch].double() * sizes).sum() / 20
        assert mean == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("probs", [False, True], ids=["index", "probs"])
def test_fit_dtypes_and_targets(dtype, probs):
    X, y = data(probs=probs, dtype=dtype)
    a, b = make_model("mlp", dtype), make_model("mlp", dtype)
    opt_a, opt_b = Adam(a.parameters(), lr=0.01), Adam(b.parameters(), lr=0.01)
    a.fit(X, y, opt_a, epochs=2, batch_size=1, shuffle=False)
    python_loop(b, opt_b, X, y, 2, 1, None, shuffle=False)
    assert_same(a, opt_a, b, opt_b)
    assert not torch.equal(next(a.parameters()), next(make_model("mlp", dtype).parameters()))  # it trained


def test_fit_matches_stock_pytorch_training():
    """The whole chain against stock modules, autograd and torch.optim.Adam in float64."""
    X, y = data(n=12)
    model = make_model("mlp")
    stock = nn.Sequential(*copy.deepcopy(list(model)))
    opt = Adam(model.parameters(), lr=0.01)
    stock_opt = torch.optim.Adam(stock.parameters(), lr=0.01)
    model.fit(X, y, opt, epochs=2, batch_size=5, shuffle=False)
    for _ in range(2):
        for batch in torch.arange(12).split(5):
            stock_opt.zero_grad()
            nn.functional.nll_loss(torch.log(stock(X[batch])), y[batch]).backward()
            stock_opt.step()
    for p, q in zip(model.parameters(), stock.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_fit_shuffles_reproducibly():
    X, y = data()
    runs = []
    for seed in (3, 3, 4):
        m = make_model("mlp")
        m.fit(X, y, Adam(m.parameters(), lr=0.01), batch_size=4, generator=torch.Generator().manual_seed(seed))
        runs.append(next(m.parameters()).detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_fit_callback_every_and_default():
    X, y = data(n=10)
    a, b = make_model("mlp"), make_model("mlp")
    seen = []
    a.fit(X, y, Adam(a.parameters(), lr=0.01), epochs=2, shuffle=False, callback=lambda s, l: seen.append((s, l)),
          callback_every=3)
    losses = python_loop(b, Adam(b.parameters(), lr=0.01), X, y, 2, 1, None, shuffle=False)
    assert [s for s, _ in seen] == [3, 6, 9, 12, 15, 18]
    assert [l for _, l in seen] == [float(losses[s - 1]) for s, _ in seen]
    ends = []
    a.fit(X, y, Adam(a.parameters(), lr=0.01), epochs=2, batch_size=4, callback=lambda s, l: ends.append(s))
    assert ends == [3, 6]  # once per epoch of three steps


@pytest.mark.parametrize("where", ["frozen", "hook", "optimizer-hook"])
def test_fit_without_one_native_call_runs_the_python_loop(where):
    X, y = data()
    a, b = make_model("mlp"), make_model("mlp")
    opt_a, opt_b = Adam(a.parameters(), lr=0.01), Adam(b.parameters(), lr=0.01)
    for m, opt in ((a, opt_a), (b, opt_b)):
        if where == "frozen":
            m[2].bias.requires_grad_(False)
        elif where == "hook":
            m[0].register_forward_hook(lambda mod, i, o: o * 0.5)
        else:
            opt.register_step_post_hook(lambda *args: None)
    with pytest.warns(UserWarning) if where == "hook" else _nothing():
        a.fit(X, y, opt_a, batch_size=3, generator=torch.Generator().manual_seed(1))
    python_loop(b, opt_b, X, y, 1, 3, torch.Generator().manual_seed(1))
    assert_same(a, opt_a, b, opt_b)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _untouched(model, opt, before):
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p, q)
    assert all(float(s["step"]) == 0 for s in opt.state.values() if "step" in s)


@pytest.mark.parametrize("case,error,match", [
    ("labels", IndexError, r"class indices from 0 to 3, outside \[0, 3\)"),
    ("negative label", IndexError, r"from -1"),
    ("X 1-D", ValueError, r"X must be \(examples, features\)"),
    ("X empty", ValueError, "at least one example"),
    ("y rows", ValueError, r"y must be \(20,\)"),
    ("features", ValueError, "input"),
    ("dtype", TypeError, r"weights\[0\] is Double but input is Float"),
    ("batch_size", ValueError, "batch_size must be an int >= 1"),
    ("epochs", ValueError, "epochs must be an int >= 0"),
    ("callback_every", ValueError, "callback_every must be an int >= 1"),
    ("other params", ValueError, "must hold exactly the model's parameters"),
    ("stock optimizer", TypeError, "fastffnn.optim.Adam or fastffnn.optim.SGD"),
    ("device", ValueError, "is on meta"),
])
def test_fit_bad_input_fails_before_any_step(case, error, match):
    X, y = data()
    model = make_model("mlp")
    opt = Adam(model.parameters(), lr=0.01)
    kw = {}
    if case == "labels":
        y = y.clone()
        y[-1] = 3
    elif case == "negative label":
        y = y.clone()
        y[7] = -1
    elif case == "X 1-D":
        X = X[0]
    elif case == "X empty":
        X, y = X[:0], y[:0]
    elif case == "y rows":
        y = y[:5]
    elif case == "features":
        X = torch.randn(20, 6, dtype=torch.float64)
    elif case == "dtype":
        X = X.float()
    elif case in ("batch_size", "epochs", "callback_every"):
        kw = {case: 0 if case != "epochs" else -1}
    elif case == "other params":
        opt = Adam(make_model("mlp").parameters(), lr=0.01)
    elif case == "stock optimizer":
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
    elif case == "device":
        X = X.to("meta")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(error, match=match):
        model.fit(X, y, opt, **kw)
    _untouched(model, opt, before)


def test_fit_op_checks_order_values_before_any_step():
    X, y = data()
    model = make_model("mlp")
    opt = Adam(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    params = model._fused_args()
    with pytest.raises(IndexError, match="order must index the 20 rows of input, got values from 0 to 20"):
        opt._native_fit(X, y, torch.tensor([0, 5, 20]), 1, params[:-1], params[-1])
    _untouched(model, opt, before)


def test_ctrl_c_stops_between_native_calls():
    """A SIGINT while a native call runs surfaces after it: whole native calls are applied, nothing half."""
    X, y = data(n=4000)
    X = X.repeat(1, 40)[:, :5].contiguous()
    a = make_model("mlp")
    opt = Adam(a.parameters(), lr=0.001)
    chunk = 700
    # Python's own handler, as in an interactive session: a process started in the background by a
    # non-interactive shell (CI's) inherits SIGINT ignored, and Python then leaves it ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            a.fit(X, y, opt, epochs=1000, shuffle=False, callback=lambda s, l: None, callback_every=chunk)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    steps = int(opt.state[next(a.parameters())]["step"])
    # a native call ends at a callback (every 700 steps) or at an epoch's end (every 4000)
    assert steps > 0 and (steps % chunk == 0 or steps % 4000 == 0)
    # and those steps are exactly the loop's first `steps` steps, every parameter's state at the same count
    assert {int(s["step"]) for s in opt.state.values()} == {steps}
    b = make_model("mlp")
    opt_b = Adam(b.parameters(), lr=0.001)
    b.fit(X, y, opt_b, epochs=steps // 4000, shuffle=False)
    rest = steps % 4000
    if rest:
        b.fit(X[:rest], y[:rest], opt_b, shuffle=False)
    assert_same(a, opt, b, opt_b)


def test_opcheck_sgd_and_fit_ops():
    fastffnn.ensure_loaded()
    model = make_model("mlp")
    params = [p.detach().clone() for p in model.parameters()]
    acts = ["tanh", "relu"]
    X, y = data(n=9)
    bufs = lambda: [torch.rand_like(p) for p in params]  # noqa: E731
    ops = torch.ops.fastffnn
    for fresh in (True, False):
        torch.library.opcheck(ops.sgd_step_.default, (params, [torch.randn_like(p) for p in params], bufs(),
                                                      [fresh] * len(params), 0.1, 0.9, 0.0, 0.01, True, False))
    torch.library.opcheck(ops.sgd_step_.default, (params, [torch.randn_like(p) for p in params], [], [], 0.1, 0.0,
                                                  0.0, 0.0, False, True))
    for lead in ((), (4,)):
        x, t = torch.randn(*lead, 5, dtype=torch.float64), torch.randint(0, 3, lead)
        torch.library.opcheck(ops.mlp_nll_sgd_step_.default,
                              (x, t, params, True, bufs(), [False] * 6, acts, "sum", 0.1, 0.9, 0.1, 0.0, False, False))
    order = torch.randperm(9)
    for bs in (1, 4):
        torch.library.opcheck(ops.mlp_nll_adam_fit_.default,
                              (X, y, order, bs, params, True, bufs(), bufs(), [], [torch.tensor(1.0) for _ in range(6)],
                               acts, 0.01, 0.9, 0.999, 1e-8, 0.0, False, False, False))
        torch.library.opcheck(ops.mlp_nll_sgd_fit_.default,
                              (X, y, order, bs, params, True, bufs(), [True] * 6, acts, 0.1, 0.9, 0.0, 0.0, True,
                               False))
    torch.library.opcheck(ops._check_mlp_nll_sgd_step_.default, (X, y, params, True, acts, "mean"))
    torch.library.opcheck(ops._check_mlp_nll_fit_.default,
                          ("mlp_nll_adam_fit_", X, y, order, 2, params, True, acts, 0.0, False, False))


def test_fit_op_errors_are_the_same_under_fake_tensors():
    """The fake kernels run the one check layer: a compiled caller sees the eager error."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fastffnn.ensure_loaded()
    model = make_model("mlp")
    params = [p.detach() for p in model.parameters()]
    X, y = torch.randn(9, 6, dtype=torch.float64), torch.randint(0, 3, (9,))  # 6 features for a 5-input model
    args = lambda X, y, o, ps: (X, y, o, 2, ps, True, [], [], ["tanh", "relu"], 0.1, 0.0, 0.0, 0.0, False,  # noqa
                                False)
    with pytest.raises(ValueError) as eager:
        torch.ops.fastffnn.mlp_nll_sgd_fit_(*args(X, y, torch.arange(9), params))
    with FakeTensorMode() as mode:
        fake = lambda t: mode.from_tensor(t)  # noqa: E731
        with pytest.raises(ValueError) as faked:
            torch.ops.fastffnn.mlp_nll_sgd_fit_(*args(fake(X), fake(y), fake(torch.arange(9)),
                                                      [fake(p) for p in params]))
    assert str(eager.value) == str(faked.value)
    assert "mlp_nll_sgd_fit_" in str(eager.value)
