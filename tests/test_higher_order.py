"""Higher-order autograd: double backward, forward mode and vmap, against stock PyTorch in float64.

Every op is checked with gradgradcheck; gradient penalties and
Hessian-vector products through FastFFNN match the stock model's; forward-mode
tangents (torch.autograd.forward_ad and torch.func.jvp) match the reference's;
torch.func.vmap over inputs, over weights, and over per-sample gradients
matches a Python loop.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import fastffnn
from fastffnn import reference as ref
from helpers import input_of, layer, targets

ACTIVATIONS = ["tanh", "relu", "sigmoid"]


def network(in_f=3, hid=6, out=5, bias=True):
    Vw, Vb = layer(hid, in_f, bias)
    Ww, Wb = layer(out, hid, bias)
    return Vw, Vb, Ww, Wb


# Every op as (ours, reference, tensors that are differentiated, extra args).
def op_cases():
    for act in ACTIVATIONS:
        x = input_of((4, 3))
        w, b = layer(5, 3)
        yield f"linear_act[{act}]", fastffnn.linear_act, ref.linear_act, (x, w, b), (act,)
    for log in (False, True):
        x = input_of((4, 3))
        w, b = layer(5, 3)
        yield f"linear_softmax[log={log}]", fastffnn.linear_softmax, ref.linear_softmax, (x, w, b), (log,)
    for red in ("mean", "sum", "none"):
        yield f"softmax_nll[index,{red}]", fastffnn.softmax_nll, ref.softmax_nll, (input_of((4, 5)),), (
            targets("index", (4,), 5), red)
    z, y = input_of((4, 5)), targets("probs", (4,), 5).requires_grad_(True)
    yield "softmax_nll[probs]", fastffnn.softmax_nll, ref.softmax_nll, (z, y), ("mean",)
    for act in ACTIVATIONS:
        for log in (False, True):
            x = input_of((4, 3))
            yield f"ffnn[{act},log={log}]", fastffnn.ffnn, ref.ffnn, (x, *network()), (act, log)
    x = input_of((3,))
    yield "ffnn[1-D,no bias]", fastffnn.ffnn, ref.ffnn, (x, *network(bias=False)), ("tanh", False)
    for act in ACTIVATIONS:
        x = input_of((4, 3))
        yield f"ffnn_nll[{act}]", fastffnn.ffnn_nll, ref.ffnn_nll, (x, *network()), (
            targets("index", (4,), 5), act, "mean")
    x, y = input_of((2, 2, 3)), targets("probs", (2, 2), 5).requires_grad_(True)
    yield "ffnn_nll[probs]", fastffnn.ffnn_nll, ref.ffnn_nll, (x, *network(), y), ("relu", "sum")


CASES = list(op_cases())
IDS = [c[0] for c in CASES]


def _call(fn, tensors, extra):
    return fn(*tensors, *extra)


@pytest.mark.parametrize("name,ours,theirs,tensors,extra", CASES, ids=IDS)
def test_gradgradcheck(name, ours, theirs, tensors, extra):
    diff = [t for t in tensors if t is not None]

    def f(*values):
        it = iter(values)
        return _call(ours, [next(it) if t is not None else None for t in tensors], extra)

    assert torch.autograd.gradgradcheck(f, diff, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name,ours,theirs,tensors,extra", CASES, ids=IDS)
def test_forward_mode_matches_reference(name, ours, theirs, tensors, extra):
    tangents = [None if t is None else torch.randn_like(t) for t in tensors]
    with fwAD.dual_level():
        duals = [None if t is None else fwAD.make_dual(t.detach(), dt) for t, dt in zip(tensors, tangents)]
        ours_out = fwAD.unpack_dual(_call(ours, duals, extra))
    with fwAD.dual_level():
        duals = [None if t is None else fwAD.make_dual(t.detach(), dt) for t, dt in zip(tensors, tangents)]
        ref_out = fwAD.unpack_dual(_call(theirs, duals, extra))
    torch.testing.assert_close(ours_out.primal, ref_out.primal)
    torch.testing.assert_close(ours_out.tangent, ref_out.tangent)

    idx = [i for i, t in enumerate(tensors) if t is not None]

    def f(fn):
        def g(*values):
            full = list(tensors)
            for i, v in zip(idx, values):
                full[i] = v
            return _call(fn, full, extra)
        return g

    primals = tuple(tensors[i].detach() for i in idx)
    tans = tuple(tangents[i] for i in idx)
    torch.testing.assert_close(torch.func.jvp(f(ours), primals, tans)[1], torch.func.jvp(f(theirs), primals, tans)[1])


def _stock_like(model):
    stock = torch.nn.Sequential(model.V, type(model.g)(), model.W)
    return lambda x: torch.softmax(stock(x), -1)


def test_each_call_takes_its_route():
    # The Python API decides once per call: the op itself (first-order
    # autograd in one C++ node), or the Python Function inside a dual level
    # or a torch.func transform. A dual tensor handed to the op directly
    # raises, with or without grad mode, rather than lose its tangent.
    x = input_of((3, 7))
    Vw, Vb, Ww, Wb = network(7, 10, 4)
    out = fastffnn.ffnn(x, Vw, Vb, Ww, Wb)
    assert "FfnnBackward" in out.grad_fn.name() and "CppNode" in out.grad_fn.name()
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.detach(), torch.randn_like(x))
        out = fastffnn.ffnn(dual, Vw, Vb, Ww, Wb)
        assert type(out.grad_fn).__name__ == "FFNNBackward"  # the Python Function's node
        assert fwAD.unpack_dual(out).tangent is not None
        for grad_mode in (True, False):
            with torch.set_grad_enabled(grad_mode), pytest.raises(RuntimeError, match="jvp is not implemented"):
                torch.ops.fastffnn.ffnn(dual, *(p.detach() for p in (Vw, Vb, Ww, Wb)))
    with torch.no_grad():
        assert fastffnn.ffnn(x, Vw, Vb, Ww, Wb).grad_fn is None


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_penalty_matches_stock(activation):
    model = fastffnn.FastFFNN(7, 9, 4, activation=activation, dtype=torch.float64)
    stock = _stock_like(model)
    x = input_of((5, 7))
    y = targets("index", (5,), 4)

    def penalised(forward):
        loss = torch.nn.functional.nll_loss(torch.log(forward(x)), y)
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        return loss + gx.pow(2).sum()

    ours = torch.autograd.grad(penalised(model), list(model.parameters()))
    theirs = torch.autograd.grad(penalised(stock), list(model.parameters()))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


def test_hessian_vector_product_matches_stock():
    model = fastffnn.FastFFNN(6, 8, 3, dtype=torch.float64)
    x = input_of((4, 6), requires_grad=False)
    y = targets("index", (4,), 3)
    params = tuple(p.detach() for p in model.parameters())
    vs = tuple(torch.randn_like(p) for p in params)

    def loss_ours(*p):
        return fastffnn.ffnn_nll(x, *p, y)

    def loss_ref(*p):
        return ref.ffnn_nll(x, *p, y)

    _, hvp_ours = torch.autograd.functional.hvp(loss_ours, params, vs)
    _, hvp_ref = torch.autograd.functional.hvp(loss_ref, params, vs)
    for a, b in zip(hvp_ours, hvp_ref):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- vmap
def _native_calls(fn, *args):
    """fn(*args), and how many times each fastffnn op ran, counted at the dispatcher."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = fn(*args)
    counts = {e.key: e.count for e in prof.key_averages() if e.key.startswith("fastffnn::")}
    return out, counts


def test_vmap_over_inputs_is_one_batched_call():
    Vw, Vb, Ww, Wb = (p.detach() for p in network(7, 10, 4))
    xs = input_of((6, 3, 7), requires_grad=False)
    ys = targets("index", (6, 3), 4)
    for name, fn, args in [
        ("linear_act", lambda x: fastffnn.linear_act(x, Vw, Vb, "relu"), (xs,)),
        ("linear_softmax", lambda x: fastffnn.linear_softmax(x, Vw, Vb, True), (xs,)),
        ("ffnn", lambda x: fastffnn.ffnn(x, Vw, Vb, Ww, Wb), (xs,)),
    ]:
        out, calls = _native_calls(torch.func.vmap(fn), *args)
        assert calls == {f"fastffnn::{name}": 1}
        torch.testing.assert_close(out, torch.stack([fn(x) for x in xs]))
    for red in ("mean", "sum", "none"):
        def loss(x, y, red=red):
            return fastffnn.ffnn_nll(x, Vw, Vb, Ww, Wb, y, reduction=red)

        def nll(z, y, red=red):
            return fastffnn.softmax_nll(z, y, red)

        out, calls = _native_calls(torch.func.vmap(loss), xs, ys)
        assert calls == {"fastffnn::ffnn_nll": 1}
        torch.testing.assert_close(out, torch.stack([loss(x, y) for x, y in zip(xs, ys)]))
        zs = input_of((6, 3, 4), requires_grad=False)
        out, calls = _native_calls(torch.func.vmap(nll), zs, ys)
        assert calls == {"fastffnn::softmax_nll": 1}
        torch.testing.assert_close(out, torch.stack([nll(z, y) for z, y in zip(zs, ys)]))
        # an unbatched target, shared by every sample
        out, calls = _native_calls(torch.func.vmap(nll, in_dims=(0, None)), zs, ys[0])
        assert calls == {"fastffnn::softmax_nll": 1}
        torch.testing.assert_close(out, torch.stack([nll(z, ys[0]) for z in zs]))


def test_vmap_over_weights_runs_an_ensemble():
    x = input_of((5, 7), requires_grad=False)
    Vws = input_of((3, 10, 7), requires_grad=False)
    Vb, Ww, Wb = (p.detach() for p in (network(7, 10, 4)[1], *network(7, 10, 4)[2:]))
    fn = lambda Vw: fastffnn.ffnn(x, Vw, Vb, Ww, Wb)  # noqa: E731
    torch.testing.assert_close(torch.func.vmap(fn)(Vws), torch.stack([fn(v) for v in Vws]))


def test_per_sample_gradients_with_vmap_of_grad():
    model = fastffnn.FastFFNN(7, 10, 4, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = input_of((5, 7), requires_grad=False)
    ys = targets("index", (5,), 4)

    def loss(p, x, y):
        return torch.func.functional_call(model, p, (x,), {}).log().gather(-1, y[None]).neg().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
    for i in range(5):
        expected = torch.autograd.grad(loss(dict(model.named_parameters()), xs[i], ys[i]), list(model.parameters()))
        for (name, got), want in zip(per_sample.items(), expected):
            torch.testing.assert_close(got[i], want, msg=name)
