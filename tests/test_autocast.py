"""Autocast: CPU autocast to bfloat16 and CUDA autocast to float16/bfloat16.

Documented behaviour (README, "Supported"): on the CPU the kernels compute in
float32, so float16/bfloat16 operands are cast to float32 and every output is
float32; on CUDA, floating operands other than float64 are cast to the
autocast dtype, the kernels accumulate in float32 and outputs come back in the
autocast dtype. Gradients reach each operand in its own dtype.
"""

from __future__ import annotations

import pytest
import torch

import fastffnn
from fastffnn import reference as ref

CUDA = torch.cuda.is_available()
DEVICE_DTYPES = [("cpu", torch.bfloat16)] + [
    pytest.param("cuda", dt, marks=pytest.mark.skipif(not CUDA, reason="no GPU")) for dt in (torch.float16,
                                                                                            torch.bfloat16)]
# outputs of a low-precision network against float32: bf16 keeps 8 bits of mantissa
TOL = {torch.bfloat16: dict(rtol=4e-2, atol=2e-2), torch.float16: dict(rtol=1e-2, atol=5e-3)}


def _expected_dtype(device):
    return torch.float32 if device == "cpu" else torch.get_autocast_dtype("cuda")


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_module_under_autocast_matches_float32(device, dtype):
    model = fastffnn.FastFFNN(64, 48, 10).to(device)
    x = torch.randn(33, 64, device=device)
    y = torch.randint(0, 10, (33,), device=device)
    with torch.no_grad():
        full = model(x)
    with torch.autocast(device, dtype=dtype):
        probs = model(x)
        loss = model.nll_loss(x, y)
        assert probs.dtype == _expected_dtype(device)
    torch.testing.assert_close(probs.float(), full, **TOL[dtype])
    torch.testing.assert_close(loss.float(), ref.ffnn_nll(x, *model.layer_parameters(), y).detach(), **TOL[dtype])
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_low_precision_activations_from_a_stock_layer(device, dtype):
    """Under autocast a stock nn.Linear hands the next layer a low-precision tensor; the fused ops take it."""
    stem = torch.nn.Linear(20, 64).to(device)
    model = fastffnn.FastFFNN(64, 32, 5).to(device)
    x = torch.randn(16, 20, device=device)
    y = torch.randint(0, 5, (16,), device=device)
    with torch.autocast(device, dtype=dtype):
        features = stem(x)
        assert features.dtype == dtype
        loss = model.nll_loss(features, y)
        out = fastffnn.linear_act(features, model.V.weight, model.V.bias)
        assert out.dtype == _expected_dtype(device)
    with torch.no_grad():
        reference = ref.ffnn_nll(stem(x), *model.layer_parameters(), y)
    torch.testing.assert_close(loss.float(), reference, **TOL[dtype])
    loss.backward()
    assert stem.weight.grad is not None and stem.weight.grad.dtype == torch.float32
    assert model.V.weight.grad is not None and torch.isfinite(model.V.weight.grad).all()


def test_float64_is_left_alone_under_cpu_autocast():
    model = fastffnn.FastFFNN(8, 6, 3, dtype=torch.float64)
    x = torch.randn(4, 8, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.ffnn(x, *model.layer_parameters()))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_fastmlp_under_autocast_matches_float32(device, dtype):
    model = fastffnn.FastMLP([64, 48, 32, 10], ["tanh", "relu"]).to(device)
    x = torch.randn(33, 64, device=device)
    y = torch.randint(0, 10, (33,), device=device)
    with torch.no_grad():
        full = model(x)
        full_loss = model.nll_loss(x, y)
    with torch.autocast(device, dtype=dtype):
        probs = model(x)
        loss = model.nll_loss(x, y)
        assert probs.dtype == _expected_dtype(device)
    torch.testing.assert_close(probs.float(), full, **TOL[dtype])
    torch.testing.assert_close(loss.float(), full_loss, **TOL[dtype])
    loss.backward()
    for p in model.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
