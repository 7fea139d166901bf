"""gradcheck in float64 on every differentiable op, and torch.library.opcheck on every registered op.

opcheck runs the schema, fake-kernel, autograd-registration and AOT-dispatch
(static and dynamic shapes) checks; forward ops are checked with inputs that
require grad, so their registered autograd formulas are exercised too.
"""

from __future__ import annotations

import pytest
import torch

import fastffnn
from helpers import input_of, layer, targets

ops = torch.ops.fastffnn
ACTIVATIONS = ["tanh", "relu", "sigmoid"]


def gradcheck(fn, inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_linear_act(activation, bias):
    x = input_of((4, 3))
    w, b = layer(5, 3, bias)
    gradcheck(lambda x, w, b: fastffnn.linear_act(x, w, b, activation), (x, w, b))


@pytest.mark.parametrize("log", [False, True])
def test_gradcheck_linear_softmax(log):
    x = input_of((4, 3))
    w, b = layer(5, 3)
    gradcheck(lambda x, w, b: fastffnn.linear_softmax(x, w, b, log), (x, w, b))


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_softmax_nll(kind, reduction):
    z = input_of((4, 5))
    y = targets(kind, (4,), 5)
    if kind == "probs":
        y.requires_grad_(True)
    gradcheck(lambda z, y: fastffnn.softmax_nll(z, y, reduction), (z, y))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("log", [False, True])
def test_gradcheck_ffnn(activation, log):
    x = input_of((4, 3))
    Vw, Vb = layer(6, 3)
    Ww, Wb = layer(5, 6)
    gradcheck(lambda *a: fastffnn.ffnn(*a, activation=activation, log=log), (x, Vw, Vb, Ww, Wb))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_ffnn_nll(activation, kind, reduction):
    x = input_of((4, 3))
    Vw, Vb = layer(6, 3)
    Ww, Wb = layer(5, 6)
    y = targets(kind, (4,), 5)
    if kind == "probs":
        y.requires_grad_(True)
    gradcheck(lambda *a: fastffnn.ffnn_nll(*a[:5], a[5], activation=activation, reduction=reduction),
              (x, Vw, Vb, Ww, Wb, y))


# ---------------------------------------------------------------- opcheck
def _network(batch=(4,), in_f=3, hid=6, out=5, requires_grad=True):
    x = input_of((*batch, in_f), requires_grad=requires_grad)
    Vw, Vb = layer(hid, in_f, requires_grad=requires_grad)
    Ww, Wb = layer(out, hid, requires_grad=requires_grad)
    return x, Vw, Vb, Ww, Wb


def _forward_cases():
    for batch in [(4,), (), (2, 3)]:
        x, Vw, Vb, Ww, Wb = _network(batch)
        for act in ACTIVATIONS:
            yield "linear_act", (x, Vw, Vb, act)
        yield "linear_act", (x, Vw, None, "tanh")
        for log in (False, True):
            yield "linear_softmax", (x, Vw, Vb, log)
            yield "ffnn", (x, Vw, Vb, Ww, Wb, "relu", log)
        yield "ffnn", (x, Vw, None, Ww, None, "tanh", False)
        for kind in ("index", "probs"):
            y = targets(kind, batch, 5)
            for red in ("mean", "sum", "none"):
                yield "softmax_nll", (input_of((*batch, 5)), y, red)
                yield "ffnn_nll", (x, Vw, Vb, Ww, Wb, y, "sigmoid", red)


def _backward_cases():
    x, Vw, Vb, Ww, Wb = _network(requires_grad=False)
    for mask in ([True, True, True], [False, True, False]):
        h = torch.tanh(x @ Vw.T)
        yield "linear_act_backward", (torch.randn_like(h), x, Vw, h, "tanh", mask)
        p = torch.softmax(x @ Vw.T, -1)
        yield "linear_softmax_backward", (torch.randn_like(p), x, Vw, p, False, mask)
    z = input_of((4, 5), requires_grad=False)
    for kind in ("index", "probs"):
        y = targets(kind, (4,), 5)
        lse = torch.logsumexp(z, -1)
        yield "softmax_nll_backward", (torch.randn(4, dtype=torch.float64), z, y, lse, "none", [True, kind == "probs"])
        yield "softmax_nll_backward", (torch.randn((), dtype=torch.float64), z, y, lse, "mean", [True, False])
    h = torch.relu(x @ Vw.T)
    lp = torch.log_softmax(h @ Ww.T, -1)
    for mask in ([True] * 5, [False, True, False, True, True]):
        yield "ffnn_backward", (torch.randn_like(lp), x, Vw, Ww, h, lp.exp(), "relu", False, mask)
        y = targets("probs", (4,), 5)
        yield "ffnn_nll_backward", (torch.randn((), dtype=torch.float64), x, Vw, Ww, h, lp, y, "relu", "sum", mask + [True])


def _differentiable_cases():
    """The closed-form gradients that a backward recording a graph uses, with inputs that require grad."""
    x, Vw, Vb, Ww, Wb = _network()
    g = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    gout = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    for mask in ([True, True, True], [False, True, False]):
        yield "linear_act_backward_differentiable", (g, x, Vw, Vb, "sigmoid", mask)
        yield "linear_softmax_backward_differentiable", (g, x, Vw, None, True, mask)
        yield "ffnn_backward_differentiable", (gout, x, Vw, Vb, Ww, Wb, "tanh", False, mask + [True, False])
    z = input_of((4, 5))
    for kind in ("index", "probs"):
        y = targets(kind, (4,), 5)
        if kind == "probs":
            y.requires_grad_(True)
        yield "softmax_nll_backward_differentiable", (torch.randn(4, dtype=torch.float64), z, y, "none",
                                                      [True, kind == "probs"])
        yield "ffnn_nll_backward_differentiable", (torch.randn((), dtype=torch.float64, requires_grad=True), x, Vw,
                                                   Vb, Ww, Wb, y, "relu", "mean", [True] * 6)


def _check_cases():
    """The argument-check ops the fake kernels call, each with valid arguments."""
    x, Vw, Vb, Ww, Wb = _network()
    y = targets("index", (4,), 5)
    yield "_check_linear_act", (x, Vw, Vb, "relu")
    yield "_check_linear_softmax", (x, Vw, None)
    yield "_check_softmax_nll", (input_of((4, 5)), targets("probs", (4,), 5), "sum")
    yield "_check_ffnn", (x, Vw, Vb, Ww, Wb, "tanh")
    yield "_check_ffnn_nll", (x, Vw, None, Ww, None, y, "sigmoid", "none")
    yield "_check_ffnn_nll_adam_step_", (x, y, [Vw, Vb, Ww, Wb], True, "relu", "mean")


def _mlp_cases():
    """The network of any depth: depth 1 and 3, with and without biases, each op and its check."""
    x = input_of((4, 3))
    for sizes, acts in (((3, 5), []), ((3, 6, 4, 5), ["tanh", "relu"])):
        weights = [layer(n_out, n_in)[0] for n_in, n_out in zip(sizes[:-1], sizes[1:])]
        biases = [layer(n_out, 1)[1] for n_out in sizes[1:]]
        for bs in (biases, [None] * len(biases)):
            for log in (False, True):
                yield "mlp", (x, weights, bs, acts, log)
            for kind in ("index", "probs"):
                for red in ("mean", "none"):
                    yield "mlp_nll", (x, weights, bs, targets(kind, (4,), 5), acts, red)
        yield "_check_mlp", (x, weights, biases, acts)
        yield "_check_mlp_nll", (x, weights, biases, targets("index", (4,), 5), acts, "sum")
        params = [t for pair in zip(weights, biases) for t in pair]
        yield "_check_mlp_nll_adam_step_", (x, targets("index", (4,), 5), params, True, acts, "mean")
        with torch.no_grad():
            hidden, a = [], x
            for w, b, act in zip(weights, biases, acts):
                a = {"tanh": torch.tanh, "relu": torch.relu}[act](torch.nn.functional.linear(a, w, b))
                hidden.append(a)
            lp = torch.log_softmax(torch.nn.functional.linear(a, weights[-1], biases[-1]), -1)
            out = lp.exp()
        depth = len(weights)
        detached = [w.detach() for w in weights]
        for mask in ([True] * (1 + 2 * depth), [False] + [True] * depth + [False] * depth):
            yield "mlp_backward", (torch.randn_like(out), x.detach(), detached, hidden, out, acts, False, mask)
            yield "mlp_nll_backward", (torch.randn((), dtype=torch.float64), x.detach(), detached, hidden, lp,
                                       targets("probs", (4,), 5), acts, "mean", mask + [True])


def _all_cases():
    return [*_forward_cases(), *_backward_cases(), *_differentiable_cases(), *_check_cases(), *_mlp_cases()]


@pytest.mark.parametrize("name,args", _all_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(ops, name).default, args)


def test_every_registered_op_is_opchecked():
    registered = {name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastffnn::")}
    checked = {f"fastffnn::{name}" for name, _ in _all_cases()}
    # in test_optim.py, each in both overloads
    checked |= {"fastffnn::adam_step_", "fastffnn::ffnn_nll_adam_step_", "fastffnn::adam_step_.tensor_lr",
                "fastffnn::ffnn_nll_adam_step_.tensor_lr", "fastffnn::mlp_nll_adam_step_",
                "fastffnn::mlp_nll_adam_step_.tensor_lr"}
    # in test_fit.py
    checked |= {"fastffnn::sgd_step_", "fastffnn::mlp_nll_sgd_step_", "fastffnn::mlp_nll_adam_fit_",
                "fastffnn::mlp_nll_sgd_fit_", "fastffnn::_check_mlp_nll_sgd_step_", "fastffnn::_check_mlp_nll_fit_"}
    assert registered == checked
