"""torch.func transforms of every op and of FastFFNN against stock PyTorch, in float64.

Each cell takes one transform (grad, vjp with random cotangents, jacrev,
jacfwd, hessian, vmap(grad), vmap(jacrev)) of one function (each op, the
module's forward and its nll_loss), with respect to the input, the weights
or both, on a 1-D and a 2-D input, and compares it with the same transform
of the equivalent stock ``torch.nn.functional`` code holding the same
tensors. A wrong number anywhere fails; so would a NotImplementedError, since
every cell here is supported.

Which broken piece turns which cells red: a wrong native backward turns the
grad and vjp cells red only where no graph is recorded (the plain-autograd
tests cover those); a wrong *_backward_differentiable formula turns
vjp/jacrev/hessian red, since torch.func always records the gradient's graph;
a wrong jvp formula (fastffnn._jvp) turns jacfwd red (24 cells when the
activation's is replaced by the identity); a wrong vmap rule turns
vmap(grad) and vmap(jacrev) red.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import func

import fastffnn

DT = torch.float64
IN, HID, OUT = 4, 5, 3


def _rand(*shape):
    return torch.randn(*shape, dtype=DT)


def _ref_act(name):
    return {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}[name]


def _ref_ffnn(x, Vw, Vb, Ww, Wb, act):
    return torch.softmax(F.linear(_ref_act(act)(F.linear(x, Vw, Vb)), Ww, Wb), -1)


def _ref_nll(logits, target):
    if logits.dim() == 1:
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
    return F.cross_entropy(logits, target)


def _module_pair(act):
    return fastffnn.FastFFNN(IN, HID, OUT, activation=act, dtype=DT)


def _call_method(model, method, params, x, *rest):
    class _Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return getattr(self.model, method)(*args)

    wrapper = _Call()
    return func.functional_call(wrapper, {"model." + k: v for k, v in params.items()}, (x, *rest))


def _cases():
    """name -> (fast(x, *weights), ref(x, *weights), weight shapes, target maker)."""
    model = _module_pair("tanh")
    return {
        "linear_act": (lambda x, w, b: fastffnn.linear_act(x, w, b, "sigmoid"),
                       lambda x, w, b: torch.sigmoid(F.linear(x, w, b)), [(HID, IN), (HID,)]),
        "linear_softmax": (lambda x, w, b: fastffnn.linear_softmax(x, w, b),
                           lambda x, w, b: torch.softmax(F.linear(x, w, b), -1), [(OUT, IN), (OUT,)]),
        "linear_log_softmax": (lambda x, w, b: fastffnn.linear_softmax(x, w, b, log=True),
                               lambda x, w, b: torch.log_softmax(F.linear(x, w, b), -1), [(OUT, IN), (OUT,)]),
        "softmax_nll": (None, None, []),
        "ffnn": (lambda x, *p: fastffnn.ffnn(x, *p, activation="tanh"),
                 lambda x, *p: _ref_ffnn(x, *p, "tanh"), [(HID, IN), (HID,), (OUT, HID), (OUT,)]),
        "ffnn_nll": (None, None, [(HID, IN), (HID,), (OUT, HID), (OUT,)]),
        "FastFFNN.forward": (lambda x, *p: _call_method(model, "forward", dict(zip(_KEYS, p)), x),
                             lambda x, *p: _ref_ffnn(x, *p, "tanh"), [(HID, IN), (HID,), (OUT, HID), (OUT,)]),
        "FastFFNN.nll_loss": (None, None, [(HID, IN), (HID,), (OUT, HID), (OUT,)]),
    }


_KEYS = ("V.weight", "V.bias", "W.weight", "W.bias")


def _build(name, dim):
    """(fast, ref, primals): functions of all primals (input first), and the primals."""
    torch.manual_seed(hash((name, dim)) % 2**31)
    fast, ref, shapes = _cases()[name]
    lead = () if dim == 1 else (2,)
    weights = [_rand(*s) for s in shapes]
    if name == "softmax_nll":
        x = _rand(*lead, OUT)
        target = torch.randint(0, OUT, lead)
        fast = lambda z: fastffnn.softmax_nll(z, target)  # noqa: E731
        ref = lambda z: _ref_nll(z, target)  # noqa: E731
    elif name in ("ffnn_nll", "FastFFNN.nll_loss"):
        x = _rand(*lead, IN)
        target = torch.randint(0, OUT, lead)
        if name == "ffnn_nll":
            fast = lambda x, *p: fastffnn.ffnn_nll(x, *p, target, activation="relu")  # noqa: E731
            act = "relu"
        else:
            model = _module_pair("tanh")
            fast = lambda x, *p: _call_method(model, "nll_loss", dict(zip(_KEYS, p)), x, target)  # noqa: E731
            act = "tanh"
        ref = lambda x, *p: _ref_nll(torch.log(_ref_ffnn(x, *p, act)), target)  # noqa: E731
    else:
        x = _rand(*lead, IN)
    return fast, ref, [x, *weights]


def _argnums(wrt, n):
    if wrt == "input":
        return (0,)
    if wrt == "weights":
        return tuple(range(1, n))
    return tuple(range(n))


def _scalar(fn, weights_of_out):
    def scalar(*primals):
        out = fn(*primals)
        return (out * weights_of_out).sum()
    return scalar


def _transform(kind, fn, primals, argnums, cotangent, out_weights):
    if kind == "grad":
        return func.grad(_scalar(fn, out_weights), argnums=argnums)(*primals)
    if kind == "vjp":
        wrt = [primals[i] for i in argnums]

        def partial(*chosen):
            full = list(primals)
            for i, c in zip(argnums, chosen):
                full[i] = c
            return fn(*full)
        _out, pullback = func.vjp(partial, *wrt)
        return pullback(cotangent)
    if kind == "jacrev":
        return func.jacrev(fn, argnums=argnums)(*primals)
    if kind == "jacfwd":
        return func.jacfwd(fn, argnums=argnums)(*primals)
    if kind == "hessian":
        return func.hessian(_scalar(fn, out_weights), argnums=argnums)(*primals)
    # vmap over a batch of 3 inputs, the weights shared
    batch = torch.stack([primals[0] + 0.1 * k for k in range(3)])
    in_dims = (0,) + (None,) * (len(primals) - 1)
    if kind == "vmap(grad)":
        inner = func.grad(_scalar(fn, out_weights), argnums=argnums)
    else:
        inner = func.jacrev(fn, argnums=argnums)
    return func.vmap(inner, in_dims=in_dims)(batch, *primals[1:])


def _flatten(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result for t in _flatten(part)]


TRANSFORMS = ["grad", "vjp", "jacrev", "jacfwd", "hessian", "vmap(grad)", "vmap(jacrev)"]
NAMES = list(_cases())


def _matrix():
    for name in NAMES:
        for wrt in ("input", "weights", "both"):
            if name == "softmax_nll" and wrt != "input":
                continue
            for kind in TRANSFORMS:
                for dim in (1, 2):
                    yield name, wrt, kind, dim


@pytest.mark.parametrize("name,wrt,kind,dim", list(_matrix()))
def test_transform_matches_stock(name, wrt, kind, dim):
    fast, ref, primals = _build(name, dim)
    argnums = _argnums(wrt, len(primals))
    out = ref(*primals)
    torch.manual_seed(1)
    cotangent = torch.randn_like(out)
    out_weights = torch.randn_like(out)
    got = _flatten(_transform(kind, fast, primals, argnums, cotangent, out_weights))
    want = _flatten(_transform(kind, ref, primals, argnums, cotangent, out_weights))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-9)



@pytest.mark.parametrize("transform", ["jacrev", "jacfwd", "vjp"])
@pytest.mark.parametrize("lead", [(), (4,)], ids=["1-D", "batch"])
def test_transforms_of_the_module_itself_with_trainable_parameters(transform, lead):
    # torch.func.jacrev(model)(x), the model's parameters requiring grad as
    # they do by default: it once returned all zeros (issue 15, item 5).
    torch.manual_seed(3)
    model = _module_pair("tanh")
    assert all(p.requires_grad for p in model.parameters())
    stock = torch.nn.Sequential(model.V, torch.nn.Tanh(), model.W, torch.nn.Softmax(-1))
    x = _rand(*lead, IN)
    if transform == "vjp":
        cot = _rand(*lead, OUT)
        got = func.vjp(model, x)[1](cot)[0]
        want = func.vjp(stock, x)[1](cot)[0]
    else:
        got = getattr(func, transform)(model)(x)
        want = getattr(func, transform)(stock)(x)
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
