"""Every op's output and every gradient against stock torch.nn, in float64.

Sizes: in in {1, 7, 300, 1025}, hidden in {1, 100, 257}, classes in
{1, 2, 5, 1000}, batch in {0, 1, 33, 4096}; then each activation, with and
without bias, 1-D and 3-D inputs, and non-contiguous inputs and weights.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import fastffnn
from fastffnn import reference as ref
from helpers import assert_matches, input_of, layer, targets

IN = [1, 7, 300, 1025]
HIDDEN = [1, 100, 257]
OUT = [1, 2, 5, 1000]
BATCH = [0, 1, 33, 4096]
ACTIVATIONS = ["tanh", "relu", "sigmoid"]
LAYOUTS = ["contiguous", "noncontiguous", "transposed"]
# Input shapes beyond (batch, features): one example, and two leading dims.
LEADS = [(), (3, 5), (0, 4)]


def network(in_f, hid, out, bias=True, dtype=torch.float64):
    Vw, Vb = layer(hid, in_f, bias, dtype)
    Ww, Wb = layer(out, hid, bias, dtype)
    return Vw, Vb, Ww, Wb


# ---------------------------------------------------------------- ffnn
@pytest.mark.parametrize("in_f,hid,out,batch", list(itertools.product(IN, HIDDEN, OUT, BATCH)))
def test_ffnn_sizes(in_f, hid, out, batch):
    x = input_of((batch, in_f))
    params = network(in_f, hid, out)
    assert_matches(fastffnn.ffnn(x, *params), ref.ffnn(x, *params), [x, *params])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("lead", LEADS + [(33,)])
def test_ffnn_variants(activation, bias, log, lead):
    x = input_of((*lead, 7))
    params = network(7, 100, 5, bias)
    ours = fastffnn.ffnn(x, *params, activation=activation, log=log)
    assert ours.shape == (*lead, 5)
    assert_matches(ours, ref.ffnn(x, *params, activation=activation, log=log), [x, *params])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ffnn_strided_operands(layout):
    x = input_of((33, 300), layout)
    Vw = input_of((100, 300), layout)
    Ww = input_of((5, 100), layout)
    Vb, Wb = input_of((100,)), input_of((5,))
    params = (Vw, Vb, Ww, Wb)
    assert_matches(fastffnn.ffnn(x, *params), ref.ffnn(x, *params), [x, *params])


def test_ffnn_grad_only_for_what_requires_it():
    x = input_of((33, 7), requires_grad=False)
    Vw, Vb, Ww, Wb = network(7, 10, 5)
    Vb.requires_grad_(False)
    params = (Vw, Vb, Ww, Wb)
    assert_matches(fastffnn.ffnn(x, *params), ref.ffnn(x, *params), [x, *params])
    fastffnn.ffnn(x, *params).sum().backward()
    assert x.grad is None and Vb.grad is None and Vw.grad is not None


def test_ffnn_no_grad_output_is_plain():
    x = input_of((4, 7))
    params = network(7, 10, 5)
    with torch.no_grad():
        out = fastffnn.ffnn(x, *params)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref.ffnn(x, *params).detach())


# ----------------------------------------------------------- linear_act
@pytest.mark.parametrize("in_f,hid,batch", list(itertools.product(IN, HIDDEN, BATCH)))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_linear_act_sizes(in_f, hid, batch, activation):
    x = input_of((batch, in_f))
    w, b = layer(hid, in_f)
    assert_matches(fastffnn.linear_act(x, w, b, activation), ref.linear_act(x, w, b, activation), [x, w, b])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_act_variants(activation, bias, lead, layout):
    x = input_of((*lead, 7), layout if lead else "contiguous")
    w, b = layer(100, 7, bias)
    assert_matches(fastffnn.linear_act(x, w, b, activation), ref.linear_act(x, w, b, activation), [x, w, b])


def test_linear_act_default_is_tanh():
    x = input_of((5, 7))
    w, b = layer(4, 7)
    torch.testing.assert_close(fastffnn.linear_act(x, w, b), torch.tanh(torch.nn.functional.linear(x, w, b)))


# ------------------------------------------------------- linear_softmax
@pytest.mark.parametrize("hid,out,batch", list(itertools.product(HIDDEN, OUT, BATCH)))
@pytest.mark.parametrize("log", [False, True])
def test_linear_softmax_sizes(hid, out, batch, log):
    x = input_of((batch, hid))
    w, b = layer(out, hid)
    assert_matches(fastffnn.linear_softmax(x, w, b, log), ref.linear_softmax(x, w, b, log), [x, w, b])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_linear_softmax_variants(bias, lead, layout):
    x = input_of((*lead, 100), layout if lead else "contiguous")
    w, b = layer(5, 100, bias)
    assert_matches(fastffnn.linear_softmax(x, w, b), ref.linear_softmax(x, w, b), [x, w, b])


@pytest.mark.parametrize("log", [False, True])
def test_softmax_stays_finite_for_huge_logits(log):
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1e4, -1e4], [-1e4, 1e4], [0.5, 0.5]], dtype=torch.float64, requires_grad=True)
    for dtype in (torch.float64, torch.float32):
        ours = fastffnn.linear_softmax(x.to(dtype), w.to(dtype), None, log)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, ref.linear_softmax(x.to(dtype), w.to(dtype), None, log))
    assert_matches(fastffnn.linear_softmax(x, w, None, log), ref.linear_softmax(x, w, None, log), [x, w])


# ---------------------------------------------------------- softmax_nll
@pytest.mark.parametrize("classes,batch", list(itertools.product(OUT, BATCH)))
@pytest.mark.parametrize("kind", ["index", "onehot", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_nll(classes, batch, kind, reduction):
    z = input_of((batch, classes))
    y = targets(kind, (batch,), classes)
    if kind == "probs":
        y.requires_grad_(True)
    assert_matches(fastffnn.softmax_nll(z, y, reduction), ref.softmax_nll(z, y, reduction), [z, y],
                   atol=1e-12 if batch else None, rtol=1e-12 if batch else None)


@pytest.mark.parametrize("kind", ["index", "onehot", "probs"])
@pytest.mark.parametrize("lead", [(), (3, 5), (0, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_nll_shapes(kind, lead, reduction):
    z = input_of((*lead, 5))
    y = targets(kind, lead, 5)
    ours = fastffnn.softmax_nll(z, y, reduction)
    assert ours.shape == (lead if reduction == "none" else ())
    assert_matches(ours, ref.softmax_nll(z, y, reduction), [z])


def test_softmax_nll_is_the_lecture_loss():
    """The lecture's neg(log(probs)).dot(gold_label) on one example, one-hot label."""
    z = input_of((5,))
    gold = targets("onehot", (), 5)
    def lecture():
        return torch.neg(torch.log(torch.softmax(z, dim=0))).dot(gold)

    assert_matches(fastffnn.softmax_nll(z, gold, "sum"), lecture(), [z])
    assert_matches(fastffnn.softmax_nll(z, gold.argmax(), "mean"), lecture(), [z])


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_softmax_nll_underflowed_probability_stays_finite(kind):
    # softmax gives the target class probability exp(-2e4) = 0; the loss is
    # exactly 2e4 and the gradient p - y, never log(0) = -inf.
    z = torch.tensor([[0.0, 2e4], [1e4, -1e4]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1]) if kind == "index" else torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        zt = z.detach().to(dtype).requires_grad_(True)
        yt = y if kind == "index" else y.to(dtype)
        loss = fastffnn.softmax_nll(zt, yt, "none")
        torch.testing.assert_close(loss, torch.tensor([2e4, 2e4], dtype=dtype))
        (g,) = torch.autograd.grad(loss.sum(), zt)
        torch.testing.assert_close(g, torch.tensor([[-1.0, 1.0], [1.0, -1.0]], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_softmax_nll_integer_target_dtypes(dtype):
    z = input_of((6, 5))
    y = torch.randint(0, 5, (6,)).to(dtype)
    assert_matches(fastffnn.softmax_nll(z, y), ref.softmax_nll(z, y.long()), [z])


# ------------------------------------------------------------- ffnn_nll
@pytest.mark.parametrize("in_f,hid,out,batch", [
    (1, 1, 1, 0), (7, 100, 5, 1), (300, 257, 2, 33), (1025, 100, 1000, 33), (300, 100, 5, 4096),
])
@pytest.mark.parametrize("kind", ["index", "onehot", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ffnn_nll(in_f, hid, out, batch, kind, reduction):
    x = input_of((batch, in_f))
    params = network(in_f, hid, out)
    y = targets(kind, (batch,), out)
    assert_matches(fastffnn.ffnn_nll(x, *params, y, reduction=reduction),
                   ref.ffnn_nll(x, *params, y, reduction=reduction), [x, *params])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (3, 5)])
def test_ffnn_nll_variants(activation, bias, lead):
    x = input_of((*lead, 7), "contiguous")
    params = network(7, 10, 5, bias)
    y = targets("probs", lead, 5).requires_grad_(True)
    assert_matches(fastffnn.ffnn_nll(x, *params, y, activation=activation),
                   ref.ffnn_nll(x, *params, y, activation=activation), [x, *params, y])


# ------------------------------------------------------------- float32
@pytest.mark.parametrize("in_f,hid,out,batch", [(7, 100, 5, 33), (300, 257, 1000, 64), (1025, 1, 2, 4096)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_against_float64_reference(in_f, hid, out, batch, activation):
    """float32 results are within float32 rounding of the float64 truth."""
    x = input_of((batch, in_f))
    params = network(in_f, hid, out)
    x32 = x.detach().float().requires_grad_(True)
    p32 = [p.detach().float().requires_grad_(True) for p in params]
    ours = fastffnn.ffnn(x32, *p32, activation=activation)
    truth = ref.ffnn(x, *params, activation=activation)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), truth, rtol=1e-4, atol=1e-6)
    seed = torch.randn_like(truth)
    g_ours = torch.autograd.grad(ours, [x32, *p32], seed.float())
    g_ref = torch.autograd.grad(truth, [x, *params], seed)
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------ one example
# On the CPU a batch of one skips at::mm for direct matrix-vector loops
# (csrc/cpu/row_ops.h), split across threads above ~128k multiply-adds;
# strided weights fall back to at::mm. Both paths, every op that has them.
ONE_ROW_SIZES = [(1, 1, 1), (7, 100, 5), (300, 257, 2), (1025, 300, 5), (257, 513, 1000)]


@pytest.mark.parametrize("in_f,hid,out", ONE_ROW_SIZES)
@pytest.mark.parametrize("lead", [(), (1,), (1, 1)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_example(in_f, hid, out, lead, layout):
    x = input_of((*lead, in_f), layout)
    Vw, Ww = input_of((hid, in_f), layout), input_of((out, hid), layout)
    Vw, Ww = (Vw / in_f ** 0.5).detach().requires_grad_(), (Ww / hid ** 0.5).detach().requires_grad_()
    Vb, Wb = input_of((hid,)), input_of((out,))
    params = (Vw, Vb, Ww, Wb)
    y = targets("onehot", lead, out)
    assert_matches(fastffnn.ffnn(x, *params), ref.ffnn(x, *params), [x, *params])
    assert_matches(fastffnn.ffnn_nll(x, *params, y), ref.ffnn_nll(x, *params, y), [x, *params])
    assert_matches(fastffnn.linear_act(x, Vw, Vb), ref.linear_act(x, Vw, Vb), [x, Vw, Vb])
