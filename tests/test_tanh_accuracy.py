"""The CPU's float32 tanh (csrc/cpu/row_ops.h, tanh_rational) against tanh in float64.

Every CPU route that applies tanh in float32 goes through it: the epilogue of a
batch (at::mm or the small products), the one-row loops and the one-call
training step. The input goes through a 1 x 1 identity layer, so the product
is exact and the output is the activation's own value.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastffnn

REL = 3.5e-7  # the fit's bound in float32 evaluation; ATen's tanh is within 1 ulp (about 6e-8)


def _through_layer(x: torch.Tensor) -> torch.Tensor:
    w = torch.ones(1, 1, dtype=x.dtype)
    return fastffnn.linear_act(x.reshape(-1, 1), w, None, "tanh").reshape(-1)


def _sweep() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    dense = torch.rand(1 << 20, generator=g) * 20 - 10  # the whole fitted range and past its clamp at 9
    tiny = torch.logspace(-40, 0, 20000).float()  # denormals up to 1, where tanh(x) ~ x
    near_clamp = torch.linspace(8.5, 9.5, 20001)
    x = torch.cat([dense, tiny, -tiny, near_clamp, -near_clamp]).float()
    return x


def test_float32_tanh_is_within_its_bound_everywhere():
    x = _sweep()
    got = _through_layer(x).double()
    want = torch.tanh(x.double())
    rel = ((got - want).abs() / want.abs().clamp_min(1e-300))
    worst = int(rel.argmax())
    assert rel.max() <= REL, f"relative error {float(rel.max()):.3g} at x = {float(x[worst])!r}"
    assert got.abs().max() <= 1.0


@pytest.mark.parametrize("rows", [1, 5, 64, 65, 300])
def test_every_route_applies_the_same_tanh(rows):
    # one row (the direct loops), the small products and at::mm end in the same epilogue
    x = torch.randn(rows, 1) * 4
    got = fastffnn.linear_act(x, torch.ones(1, 1), None, "tanh")
    torch.testing.assert_close(got.double(), torch.tanh(x.double()), rtol=REL, atol=0)


def test_float32_tanh_special_values():
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 1e4, -1e4, 1e-45, -1e-45, 9.0, -9.0, 3e38])
    got = _through_layer(x)
    assert got[0] == 0 and got[1] == 0  # (the product's sum turns -0 into +0 before tanh sees it)
    assert got[2] == 1 and got[3] == -1
    assert torch.isnan(got[4])
    assert got[5] == 1 and got[6] == -1 and got[11] == 1
    # a denormal is its own tanh, to the bound
    assert abs(float(got[7]) - 1e-45) <= 1.5e-45 and abs(float(got[8]) + 1e-45) <= 1.5e-45
    torch.testing.assert_close(got[9:11].double(), torch.tanh(torch.tensor([9.0, -9.0], dtype=torch.float64)),
                               rtol=REL, atol=0)


def test_float32_tanh_is_odd():
    x = torch.rand(100000) * 12
    assert torch.equal(_through_layer(x), -_through_layer(-x))


def test_float64_keeps_the_library_tanh():
    x = torch.randn(4096, dtype=torch.float64) * 5
    torch.testing.assert_close(_through_layer(x), torch.tanh(x), rtol=2e-16, atol=0)
