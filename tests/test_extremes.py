"""Extreme values behave as stock PyTorch: huge logits stay finite, NaN and Inf propagate the same way,
denormals and weights of 1e-30 or 1e30 give PyTorch's answers; and the CPU results do not depend on the
thread count."""

from __future__ import annotations

import pytest
import torch

import fastffnn
from fastffnn import reference as ref
from helpers import layer

OPS = ["linear_act", "linear_softmax", "softmax_nll", "ffnn", "ffnn_nll"]


def _run(op, x, params, y, module):
    Vw, Vb, Ww, Wb = params
    if op == "linear_act":
        return module.linear_act(x, Vw, Vb, "tanh")
    if op == "linear_softmax":
        return module.linear_softmax(x, Vw, Vb)
    if op == "softmax_nll":
        return module.softmax_nll(x @ Vw.T, y, "none")
    if op == "ffnn":
        return module.ffnn(x, Vw, Vb, Ww, Wb)
    return module.ffnn_nll(x, Vw, Vb, Ww, Wb, y, reduction="none")


def _network(dtype, scale=1.0):
    Vw, Vb = layer(6, 5, dtype=dtype, requires_grad=False)
    Ww, Wb = layer(4, 6, dtype=dtype, requires_grad=False)
    return Vw * scale, Vb, Ww * scale, Wb


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1e4, 1e30])
def test_huge_logits_stay_finite(dtype, magnitude):
    z = torch.randn(8, 5, dtype=dtype) * magnitude
    y = torch.randint(0, 5, (8,))
    for log in (False, True):
        eye = torch.eye(5, dtype=dtype)
        ours = fastffnn.linear_softmax(z, eye, None, log)
        torch.testing.assert_close(ours, ref.linear_softmax(z, eye, None, log))
        assert torch.isfinite(ours).all()
    loss = fastffnn.softmax_nll(z, y, "none")
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref.softmax_nll(z, y, "none"))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("batch", [1, 7])
def test_nan_and_inf_propagate_like_pytorch(op, bad, batch):
    dtype = torch.float64
    x = torch.randn(batch, 5, dtype=dtype)
    x[0, 2] = bad
    params = _network(dtype)
    y = torch.randint(0, 4 if op.startswith("ffnn") else 6, (batch,))
    ours = _run(op, x, params, y, fastffnn)
    theirs = _run(op, x, params, y, ref)
    torch.testing.assert_close(ours, theirs, equal_nan=True)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_tiny_and_huge_weights_match_pytorch(op, scale):
    dtype = torch.float64
    x = torch.randn(7, 5, dtype=dtype)
    params = _network(dtype, scale)
    y = torch.randint(0, 4 if op.startswith("ffnn") else 6, (7,))
    torch.testing.assert_close(_run(op, x, params, y, fastffnn), _run(op, x, params, y, ref), equal_nan=True)


@pytest.mark.parametrize("op", OPS)
def test_denormal_inputs_match_pytorch(op):
    dtype = torch.float32
    x = torch.randn(7, 5, dtype=dtype) * 1e-39  # below float32's smallest normal, 1.2e-38
    assert (x != 0).any() and (x.abs() < torch.finfo(dtype).tiny).all()
    params = _network(dtype)
    y = torch.randint(0, 4 if op.startswith("ffnn") else 6, (7,))
    torch.testing.assert_close(_run(op, x, params, y, fastffnn), _run(op, x, params, y, ref))


# ------------------------------------------------------------ determinism
# What holds on the CPU (README, "Determinism"): the same inputs give the same bits run after run
# at a given thread count, everything included. Across thread counts, the forward outputs and
# losses, the bias gradients (fastffnn's own fixed-order column sums) and every result of a batch
# of one (fastffnn's own loops) are identical too; the weight and input gradients of larger
# batches come from MKL's matrix products, which may split their sums differently with another
# thread count, so they can differ in the last bits, as stock PyTorch's do.
def _everything(batch, in_f, hid, out):
    """Every op's forward and parameter gradients, and three one-call steps, labelled."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, in_f, generator=g)
    Vw = (torch.randn(hid, in_f, generator=g) / in_f ** 0.5).requires_grad_()
    Vb = torch.randn(hid, generator=g).requires_grad_()
    Ww = (torch.randn(out, hid, generator=g) / hid ** 0.5).requires_grad_()
    Wb = torch.randn(out, generator=g).requires_grad_()
    y = torch.randint(0, out, (batch,), generator=g)
    results = {}
    outputs = {"ffnn_nll": fastffnn.ffnn_nll(x, Vw, Vb, Ww, Wb, y, reduction="none"),
               "ffnn": fastffnn.ffnn(x, Vw, Vb, Ww, Wb), "linear_act": fastffnn.linear_act(x, Vw, Vb, "sigmoid")}
    for name, value in outputs.items():
        results[f"{name} output"] = value.detach()
        seed = torch.randn(value.shape, generator=g)
        grads = torch.autograd.grad(value, [Vw, Vb, Ww, Wb], seed, allow_unused=True)
        for pname, grad in zip(("V.weight", "V.bias", "W.weight", "W.bias"), grads):
            if grad is not None:
                results[f"{name} grad {pname}"] = grad
    model = fastffnn.FastFFNN(in_f, hid, out)
    with torch.no_grad():
        for p, q in zip(model.parameters(), (Vw, Vb, Ww, Wb)):
            p.copy_(q)
    opt = fastffnn.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(3):
        results[f"train_step {i} loss"] = model.train_step(x if batch > 1 else x[0], y if batch > 1 else y[0], opt)
    for name, p in model.named_parameters():
        results[f"after train_step {name}"] = p.detach().clone()
    return results


def _across_threads_too(label: str, batch: int) -> bool:
    if batch == 1 or label == "train_step 0 loss":
        return True
    if label.startswith(("after", "train_step")):  # later steps start from MKL-made weight updates
        return False
    return label.endswith("output") or label.endswith(".bias")


@pytest.mark.parametrize("batch,in_f,hid,out", [(4096, 300, 100, 5), (1, 1025, 300, 5), (257, 1025, 513, 10)])
def test_same_bits_run_after_run_and_what_holds_across_thread_counts(batch, in_f, hid, out):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _everything(batch, in_f, hid, out)
        torch.set_num_threads(max(2, threads))
        many = _everything(batch, in_f, hid, out)
        again = _everything(batch, in_f, hid, out)
    finally:
        torch.set_num_threads(threads)
    for label in many:
        assert torch.equal(many[label], again[label]), f"{label} differs between two runs"
        if _across_threads_too(label, batch):
            assert torch.equal(one[label], many[label]), f"{label} differs between 1 and {max(2, threads)} threads"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 3, 7, 10, 15, 16])
@pytest.mark.parametrize("log", [False, True])
def test_narrow_rows_do_not_depend_on_the_rows_beside_them(dtype, n, log):
    # Narrow rows (fewer than two vectors: n < 16 in float32, < 8 in float64) are softmaxed 8 or 4 side by
    # side, one row per vector lane. Through an identity weight (an exact product), each row of a batch of
    # 21 (two whole groups and a partial one, or the reverse order of them) has the bits it has alone, a
    # NaN, +inf or -inf row leaves its neighbours as they were, and all agree with float64.
    torch.manual_seed(n)
    eye = torch.eye(n, dtype=dtype)
    b = torch.randn(n, dtype=dtype)
    x = torch.randn(21, n, dtype=dtype) * 5
    x[4, 0], x[9, -1], x[13] = float("nan"), float("inf"), float("-inf")
    out = fastffnn.linear_softmax(x, eye, b, log=log)
    alone = torch.cat([fastffnn.linear_softmax(x[i:i + 1], eye, b, log=log) for i in range(21)])
    reverse = fastffnn.linear_softmax(x.flip(0), eye, b, log=log).flip(0)
    assert torch.equal(out.isnan(), alone.isnan()) and torch.equal(out.nan_to_num(), alone.nan_to_num())
    assert torch.equal(out.nan_to_num(), reverse.nan_to_num())
    expected = ref.linear_softmax(x.double(), eye.double(), b.double(), log=log)
    assert torch.equal(out.isnan(), expected.isnan()), (out, expected)
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol, equal_nan=True)
