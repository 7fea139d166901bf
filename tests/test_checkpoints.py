"""Checkpoints: bad state_dicts are refused with the key and both shapes or dtypes; CPU and CUDA exchange them."""

from __future__ import annotations

import io

import pytest
import torch

import fastffnn

CUDA = torch.cuda.is_available()


def test_wrong_shape_names_the_key_and_both_shapes():
    model = fastffnn.FastFFNN(7, 10, 5)
    state = fastffnn.FastFFNN(7, 11, 5).state_dict()
    with pytest.raises(RuntimeError, match=r"size mismatch for V\.weight: copying a param with shape "
                                           r"torch\.Size\(\[11, 7\]\).*torch\.Size\(\[10, 7\]\)"):
        model.load_state_dict(state)


def test_missing_and_unexpected_keys_are_named():
    model = fastffnn.FastFFNN(7, 10, 5)
    state = model.state_dict()
    del state["W.bias"]
    state["U.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "W\.bias"'):
        model.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "U\.weight"'):
        model.load_state_dict(state)


def test_wrong_dtype_names_the_key_and_both_dtypes_and_shapes():
    model = fastffnn.FastFFNN(7, 10, 5)
    state = {k: v.double() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"dtype mismatch for V\.weight: the checkpoint has torch\.float64 of "
                                           r"shape \(10, 7\), the model has torch\.float32 of shape \(10, 7\)"):
        model.load_state_dict(state)
    outer = torch.nn.Sequential(model)
    with pytest.raises(RuntimeError, match=r"dtype mismatch for 0\.W\.bias"):
        outer.load_state_dict({f"0.{k}": v for k, v in state.items()})


def test_round_trip_through_bytes_keeps_every_bit():
    model = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    twin = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    twin.load_state_dict(torch.load(buf))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not CUDA, reason="no GPU")
def test_cuda_checkpoint_loads_on_the_cpu_and_back():
    gpu = fastffnn.FastFFNN(7, 10, 5).cuda()
    buf = io.BytesIO()
    torch.save(gpu.state_dict(), buf)
    buf.seek(0)
    cpu = fastffnn.FastFFNN(7, 10, 5)
    cpu.load_state_dict(torch.load(buf, map_location="cpu"))
    x = torch.randn(3, 7)
    torch.testing.assert_close(cpu(x), gpu(x.cuda()).cpu(), rtol=1e-5, atol=1e-6)
    back = fastffnn.FastFFNN(7, 10, 5).cuda()
    back.load_state_dict(cpu.state_dict())  # CPU tensors into a CUDA model: copied across
    assert all(p.is_cuda for p in back.parameters())
