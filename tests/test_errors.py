"""Bad input raises a clear error that names the argument and the sizes; never a crash or garbage."""

from __future__ import annotations

import pytest
import torch

import fastffnn
from helpers import input_of, layer

ops = torch.ops.fastffnn


def net(in_f=7, hid=10, out=5, dtype=torch.float64):
    Vw, Vb = layer(hid, in_f, dtype=dtype)
    Ww, Wb = layer(out, hid, dtype=dtype)
    return Vw, Vb, Ww, Wb


def test_wrong_in_features():
    x = input_of((3, 8))
    Vw, Vb, Ww, Wb = net()
    with pytest.raises(ValueError, match=r"input has 8 features but V_weight of shape \[10, 7\] expects 7"):
        fastffnn.ffnn(x, Vw, Vb, Ww, Wb)
    with pytest.raises(ValueError, match=r"input has 8 features but weight of shape \[10, 7\] expects 7"):
        fastffnn.linear_act(x, Vw, Vb)


def test_layers_that_do_not_chain():
    x = input_of((3, 7))
    Vw, Vb, _, _ = net()
    Ww, Wb = layer(5, 11)
    with pytest.raises(ValueError, match=r"hidden layer has 10 features but W_weight of shape \[5, 11\] expects 11"):
        fastffnn.ffnn(x, Vw, Vb, Ww, Wb)


def test_wrong_bias_shape():
    x = input_of((3, 7))
    Vw, _, Ww, Wb = net()
    with pytest.raises(ValueError, match=r"V_bias must have shape \[10\].*got \[9\]"):
        fastffnn.ffnn(x, Vw, torch.randn(9, dtype=torch.float64), Ww, Wb)


def test_weight_not_2d():
    with pytest.raises(ValueError, match=r"weight must be 2-D.*\[70\]"):
        fastffnn.linear_act(input_of((3, 7)), torch.randn(70, dtype=torch.float64))


def test_zero_dim_input():
    Vw, Vb, Ww, Wb = net()
    with pytest.raises(ValueError, match="at least 1 dimension"):
        fastffnn.ffnn(torch.tensor(1.0, dtype=torch.float64), Vw, Vb, Ww, Wb)


def test_mismatched_dtypes():
    x = input_of((3, 7), dtype=torch.float32)
    Vw, Vb, Ww, Wb = net()
    with pytest.raises(TypeError, match="V_weight is Double but input is Float"):
        fastffnn.ffnn(x, Vw, Vb, Ww, Wb)
    with pytest.raises(TypeError, match="W_bias is Float but input is Double"):
        fastffnn.ffnn(x.double(), Vw, Vb, Ww, Wb.float())


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.float16, torch.bfloat16])
def test_unsupported_input_dtype(dtype):
    x = torch.ones(3, 7, dtype=dtype)
    w = torch.ones(10, 7, dtype=dtype)
    with pytest.raises(TypeError, match="input must be float32 or float64"):
        fastffnn.linear_act(x, w)


def test_mismatched_devices():
    # With no GPU here, the meta device stands in for "another device": the
    # dispatcher then runs the fake kernel, which checks devices the same way.
    x = input_of((3, 7))
    Vw, Vb, Ww, Wb = net()
    with pytest.raises(ValueError, match="V_weight is on meta but input is on cpu"):
        fastffnn.ffnn(x, Vw.detach().to("meta"), Vb, Ww, Wb)


def test_unknown_activation_and_reduction():
    x = input_of((3, 7))
    Vw, Vb, Ww, Wb = net()
    with pytest.raises(ValueError, match="activation must be one of 'tanh', 'relu', 'sigmoid', got 'gelu'"):
        fastffnn.ffnn(x, Vw, Vb, Ww, Wb, activation="gelu")
    with pytest.raises(ValueError, match="reduction must be one of 'mean', 'sum', 'none', got 'avg'"):
        fastffnn.softmax_nll(input_of((3, 5)), torch.tensor([0, 1, 2]), reduction="avg")


@pytest.mark.parametrize("bad", [5, -1, 100])
def test_target_out_of_range(bad):
    z = input_of((3, 5))
    with pytest.raises(IndexError, match=f"target holds class index {bad} but there are only 5 classes"):
        fastffnn.softmax_nll(z, torch.tensor([0, bad, 1]))
    x = input_of((3, 7))
    with pytest.raises(IndexError, match=f"class index {bad}"):
        fastffnn.ffnn_nll(x, *net(), torch.tensor([0, bad, 1]))


def test_wrong_target_shapes():
    z = input_of((3, 5))
    with pytest.raises(ValueError, match=r"class-index target must have shape \[3\].*got \[3, 1\]"):
        fastffnn.softmax_nll(z, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"probability target must have the logits' shape \[3, 5\], got \[3, 4\]"):
        fastffnn.softmax_nll(z, torch.rand(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="probability target must have the logits' dtype Double, got Float"):
        fastffnn.softmax_nll(z, torch.rand(3, 5))
    with pytest.raises(TypeError, match="class indices .* or probabilities"):
        fastffnn.softmax_nll(z, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"class-index target must have shape \[3\]"):
        fastffnn.ffnn_nll(input_of((3, 7)), *net(), torch.zeros(4, dtype=torch.long))


def test_logits_without_classes():
    with pytest.raises(ValueError, match=r"at least one class, got \[3, 0\]"):
        fastffnn.softmax_nll(torch.randn(3, 0, dtype=torch.float64), torch.zeros(3, dtype=torch.long))


def test_backward_ops_check_their_operands():
    x = input_of((3, 7), requires_grad=False)
    w, _ = layer(4, 7, requires_grad=False)
    h = torch.tanh(x @ w.T)
    with pytest.raises(ValueError, match=r"grad_output has shape \[3, 5\], expected \[3, 4\]"):
        ops.linear_act_backward(torch.randn(3, 5, dtype=torch.float64), x, w, h, "tanh", [True] * 3)
    with pytest.raises(ValueError, match=r"output has shape \[2, 4\], expected \[3, 4\]"):
        ops.linear_softmax_backward(h[:2], x, w, h[:2], False, [True] * 3)
    z = input_of((3, 5), requires_grad=False)
    lse = torch.logsumexp(z, -1)
    with pytest.raises(ValueError, match=r"grad_loss has shape \[3\], expected \[\]"):
        ops.softmax_nll_backward(lse, z, torch.tensor([0, 1, 2]), lse, "mean", [True, False])
    with pytest.raises(ValueError, match=r"lse has shape \[2\], expected \[3\]"):
        ops.softmax_nll_backward(lse[0], z, torch.tensor([0, 1, 2]), lse[:2], "mean", [True, False])


def test_module_errors():
    with pytest.raises(ValueError, match="activation must be one of"):
        fastffnn.FastFFNN(3, 4, 2, activation="gelu")
    model = fastffnn.FastFFNN(3, 4, 2)
    with pytest.raises(ValueError, match="input has 5 features"):
        model(torch.randn(2, 5))
    model.g = torch.nn.GELU()
    with pytest.raises(ValueError, match="must be nn.Tanh, nn.ReLU or nn.Sigmoid, got GELU"):
        model(torch.randn(2, 3))
