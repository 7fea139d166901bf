"""The CPU's register-blocked products for small batches.

(csrc/cpu/row_ops.h, "small-batch products".)

A batch of 2 to 64 rows takes fastffnn's own products instead of at::mm. Their
tiles have edges at every multiple of 3 and 6 rows, 4 and 16 columns (8 lanes
a vector), so the sizes below sit on each side of those, and of the 64-row
limit where at::mm takes over. Everything is checked against stock PyTorch in
float64, forward and all three gradients, for both the dot-product kernel
(the forward) and the broadcast kernel (both backward products).
"""

from __future__ import annotations

import pytest
import torch

import fastffnn
from helpers import input_of, layer

BATCHES = [2, 3, 4, 6, 7, 13, 32, 63, 64, 65]
# (in_features, out_features): columns on both sides of the 4-wide dot tiles
# and the 16-wide broadcast panels, k on both sides of a vector (8 floats, 4
# doubles), and the lecture's shape.
WIDTHS = [(1, 1), (7, 3), (8, 5), (9, 16), (17, 15), (33, 17), (300, 100)]
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _check(batch, in_f, out_f, dtype, layout, weight_layout="contiguous"):
    x = input_of((batch, in_f), layout=layout, dtype=dtype)
    w = input_of((out_f, in_f), layout=weight_layout, dtype=dtype)
    b = torch.randn(out_f, dtype=dtype, requires_grad=True)
    y = fastffnn.linear_act(x, w, b, "tanh")
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), g)

    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref = torch.tanh(torch.nn.functional.linear(x64, w64, b64))
    ref_grads = torch.autograd.grad(ref, (x64, w64, b64), g.double())
    torch.testing.assert_close(y, ref.to(dtype), **TOL[dtype])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("in_f,out_f", WIDTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_small_batch_products_match_stock(batch, in_f, out_f, dtype):
    _check(batch, in_f, out_f, dtype, "contiguous")


@pytest.mark.parametrize("layout,weight_layout", [("noncontiguous", "contiguous"), ("transposed", "contiguous"),
                                                  ("contiguous", "transposed"), ("contiguous", "noncontiguous")])
@pytest.mark.parametrize("batch", [5, 32])
def test_small_batch_products_with_strided_operands(batch, layout, weight_layout):
    # Operands whose columns are not contiguous fall back to at::mm, or to the
    # kernel's general strides for the broadcast operand: both must be right.
    _check(batch, 19, 23, torch.float32, layout, weight_layout)


def _aten_products(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::matmul")}


@pytest.mark.parametrize("batch,own", [(2, True), (32, True), (64, True), (65, False)])
def test_small_batches_take_their_own_products(batch, own):
    # The route: up to 64 rows, the forward and backward of a whole network run
    # no ATen product at all; from 65 rows at::mm takes over.
    m = fastffnn.FastFFNN(30, 20, 3)
    x = torch.randn(batch, 30)
    y = torch.randint(0, 3, (batch,))

    def step():
        m.nll_loss(x, y).backward()

    used = _aten_products(step)
    assert (not used) if own else used, used


def test_small_products_do_not_depend_on_the_thread_count():
    x = torch.randn(64, 300)
    w = torch.randn(300, 300, requires_grad=True)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            y = fastffnn.linear_act(x, w, None, "tanh")
            (gw,) = torch.autograd.grad(y.sum(), w)
            results.append((y, gw))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


# A narrow layer (at most 12 outputs, at most 2^20 multiply-adds) takes the
# small products at any batch: the sizes sit on both sides of 12 outputs and
# of the work bound (65 * 12 * 1344 = 1,048,320 <= 2^20 < 66 * 12 * 1344).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch,in_f,out_f", [(65, 7, 1), (200, 100, 10), (200, 64, 12), (200, 64, 13),
                                              (1000, 33, 5), (65, 1344, 12), (66, 1344, 12)])
def test_narrow_layers_match_stock(batch, in_f, out_f, dtype):
    _check(batch, in_f, out_f, dtype, "contiguous")


@pytest.mark.parametrize("sizes,batch,own", [([30, 8, 3], 200, True), ([30, 8, 3], 5000, False),
                                             ([30, 13, 3], 200, False)])
def test_narrow_networks_take_their_own_products(sizes, batch, own):
    # every layer narrow and small: no ATen product at any batch size; past the work bound, or with a
    # wider layer, at::mm serves (those layers at least)
    m = fastffnn.FastMLP(sizes)
    x = torch.randn(batch, sizes[0])
    y = torch.randint(0, sizes[-1], (batch,))

    def step():
        m.nll_loss(x, y).backward()

    used = _aten_products(step)
    assert (not used) if own else used, used
