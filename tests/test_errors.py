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
    # With no GPU here, the meta device stands in for "another device". A plain
    # call dispatches to the fake kernel (meta outranks CPU); redispatching to
    # the CPU key runs the C++ kernel's own check. Both must refuse, alike.
    x = input_of((3, 7))
    Vw, Vb, Ww, Wb = (p.detach() for p in net())
    args = (x.detach(), Vw.to("meta"), Vb, Ww, Wb, "tanh", False)
    message = "fastffnn.ffnn: V_weight is on meta but input is on cpu; move them to one device"
    with pytest.raises(ValueError) as fake:
        fastffnn.ffnn(*args[:5])
    with pytest.raises(ValueError) as kernel:
        ops.ffnn.default.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args)
    assert str(fake.value) == message
    assert str(kernel.value).splitlines()[0] == message


def _t(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype) if shape else torch.tensor(1.0, dtype=dtype)


# Bad inputs whose error depends only on metadata, so the fake kernel
# (torch.compile, FakeTensor) must raise it exactly as the C++ kernel does.
PARITY = {
    "weight dtype": ("linear_act", lambda: (_t(3, 4), _t(5, 4, dtype=torch.float64), None, "tanh")),
    "bias dtype": ("linear_act", lambda: (_t(3, 4), _t(5, 4), _t(5, dtype=torch.float64), "tanh")),
    "bias shape": ("linear_act", lambda: (_t(3, 4), _t(5, 4), _t(4), "tanh")),
    "bias 2-D": ("linear_softmax", lambda: (_t(3, 4), _t(5, 4), _t(1, 5), False)),
    "in features": ("linear_act", lambda: (_t(3, 6), _t(5, 4), None, "tanh")),
    "weight 1-D": ("linear_act", lambda: (_t(3, 4), _t(4), None, "tanh")),
    "input 0-d": ("linear_act", lambda: (_t(), _t(5, 4), None, "tanh")),
    "integer input": ("linear_act", lambda: (torch.ones(3, 4, dtype=torch.int64),
                                             torch.ones(5, 4, dtype=torch.int64), None, "tanh")),
    "float16 on the CPU": ("linear_act", lambda: (_t(3, 4, dtype=torch.float16), _t(5, 4, dtype=torch.float16),
                                                  None, "tanh")),
    "bfloat16 on the CPU": ("ffnn", lambda: (_t(3, 4, dtype=torch.bfloat16), _t(5, 4, dtype=torch.bfloat16), None,
                                             _t(2, 5, dtype=torch.bfloat16), None, "tanh", False)),
    "activation": ("linear_act", lambda: (_t(3, 4), _t(5, 4), None, "gelu")),
    "network activation": ("ffnn", lambda: (_t(2, 4), _t(5, 4), None, _t(3, 5), None, "gelu", False)),
    "reduction": ("softmax_nll", lambda: (_t(2, 3), torch.tensor([0, 1]), "avg")),
    "index target shape": ("softmax_nll", lambda: (_t(2, 3), torch.tensor([0, 1, 2]), "mean")),
    "probability target shape": ("softmax_nll", lambda: (_t(2, 3), _t(2, 4), "mean")),
    "probability target dtype": ("softmax_nll", lambda: (_t(2, 3), _t(2, 3, dtype=torch.float64), "mean")),
    "bool target": ("softmax_nll", lambda: (_t(2, 3), torch.ones(2, dtype=torch.bool), "mean")),
    "zero classes": ("softmax_nll", lambda: (_t(2, 0), torch.tensor([0, 0]), "mean")),
    "hidden features": ("ffnn", lambda: (_t(2, 4), _t(5, 4), None, _t(3, 6), None, "tanh", False)),
    "W_bias shape": ("ffnn", lambda: (_t(2, 4), _t(5, 4), None, _t(3, 5), _t(4), "tanh", False)),
    "network target": ("ffnn_nll", lambda: (_t(2, 4), _t(5, 4), _t(5), _t(3, 5), _t(3), torch.tensor([0, 1, 2]),
                                            "tanh", "mean")),
    "network with no class": ("ffnn_nll", lambda: (_t(2, 4), _t(5, 4), _t(5), _t(0, 5), None, torch.tensor([0, 1]),
                                                   "tanh", "mean")),
}


def _error(call):
    try:
        call()
    except Exception as e:  # noqa: BLE001: which exception is what is compared
        return e
    raise AssertionError("no error")


@pytest.mark.parametrize("case", list(PARITY))
def test_eager_and_fake_give_the_same_error(case):
    from torch._subclasses.fake_tensor import FakeTensorMode

    name, make = PARITY[case]
    op = getattr(ops, name).default
    args = make()
    eager = _error(lambda: op(*args))
    with FakeTensorMode() as mode:
        fake_args = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        fake = _error(lambda: op(*fake_args))
    assert type(fake) is type(eager), (eager, fake)
    assert str(fake).splitlines()[0] == str(eager).splitlines()[0]
    # torch.compile traces with the fake kernel and reports its error inside its own
    torch._dynamo.reset()
    compiled = _error(lambda: torch.compile(lambda *a: op(*a), backend="eager", fullgraph=True)(*args))
    assert isinstance(compiled, torch._dynamo.exc.TorchRuntimeError), compiled  # raised while tracing
    assert str(eager).splitlines()[0] in str(compiled)


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
    # the fused activation is named by `activation`, which refuses GELU; the
    # model itself then runs its submodules (tests/test_step_reliability.py)
    with pytest.raises(ValueError, match="must be nn.Tanh, nn.ReLU or nn.Sigmoid, got GELU"):
        model.activation
    with pytest.warns(UserWarning, match="g is GELU, which is not one of"):
        out = model(torch.randn(2, 3))
    assert out.shape == (2, 2)
