"""FastFFNN is a drop-in for the lecture's FFNN."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn, optim

from fastffnn import FastFFNN
from fastffnn import reference as ref
from helpers import input_of, targets
from lecture import FFNN


def stock_and_fast(inp=7, hid=10, out=5, dtype=torch.float64):
    stock = FFNN(inp, hid, out).to(dtype)
    nn.init.uniform_(stock.V.weight)  # as the lecture initialises it
    fast = FastFFNN(inp, hid, out, dtype=dtype)
    fast.load_state_dict(stock.state_dict())
    return stock, fast


def test_same_parameters_and_state_dict_keys():
    stock, fast = stock_and_fast()
    assert list(fast.state_dict()) == list(stock.state_dict()) == ["V.weight", "V.bias", "W.weight", "W.bias"]
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in stock.named_parameters()]
    assert isinstance(fast.V, nn.Linear) and isinstance(fast.W, nn.Linear) and isinstance(fast.g, nn.Tanh)
    # and the reverse direction: a FastFFNN checkpoint loads into the stock class
    back = FFNN(7, 10, 5).double()
    back.load_state_dict(fast.state_dict())
    x = input_of((7,), requires_grad=False)
    torch.testing.assert_close(back(x), stock(x))


def test_forward_matches_lecture_on_one_example():
    stock, fast = stock_and_fast()
    x = input_of((7,))
    probs = fast(x)
    assert probs.shape == (5,)
    torch.testing.assert_close(probs, stock(x))
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_forward_on_a_batch_is_the_lecture_model_per_row():
    stock, fast = stock_and_fast()
    x = input_of((33, 7), requires_grad=False)
    torch.testing.assert_close(fast(x), torch.stack([stock(row) for row in x]))


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
def test_log_probs_and_nll_loss(activation, bias):
    fast = FastFFNN(7, 10, 5, activation=activation, bias=bias, dtype=torch.float64)
    params = (fast.V.weight, fast.V.bias, fast.W.weight, fast.W.bias)
    x = input_of((33, 7))
    torch.testing.assert_close(fast.log_probs(x), ref.ffnn(x, *params, activation=activation, log=True))
    y = targets("index", (33,), 5)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(fast.nll_loss(x, y, reduction),
                                   ref.ffnn_nll(x, *params, y, activation=activation, reduction=reduction))


def test_module_conveniences():
    fast = FastFFNN(7, 10, 5)
    nn.init.uniform_(fast.V.weight)
    nn.init.xavier_uniform_(fast.W.weight)
    assert fast.V.weight.dtype == torch.float32
    fast.double()
    assert all(p.dtype == torch.float64 for p in fast.parameters())
    fast.to(torch.float32)
    fast.eval()
    assert not fast.training
    fast.train()
    x = input_of((4, 7), dtype=torch.float32, requires_grad=False)
    expected = fast(x)
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        torch.testing.assert_close(clone(x), expected)
        assert clone.V.weight.data_ptr() != fast.V.weight.data_ptr()
    buf = io.BytesIO()
    torch.save(fast.state_dict(), buf)
    buf.seek(0)
    loaded = FastFFNN(7, 10, 5)
    loaded.load_state_dict(torch.load(buf))
    torch.testing.assert_close(loaded(x), expected)
    assert "activation='tanh'" in repr(fast)


def test_replacing_g_changes_the_fused_activation():
    fast = FastFFNN(7, 10, 5, dtype=torch.float64)
    fast.g = nn.ReLU()
    params = (fast.V.weight, fast.V.bias, fast.W.weight, fast.W.bias)
    x = input_of((4, 7), requires_grad=False)
    torch.testing.assert_close(fast(x), ref.ffnn(x, *params, activation="relu"))


def test_from_lecture_ffnn_and_sequential():
    stock, _ = stock_and_fast()
    x = input_of((7,), requires_grad=False)
    fast = FastFFNN.from_module(stock)
    torch.testing.assert_close(fast(x), stock(x))
    assert fast.V.weight.data_ptr() != stock.V.weight.data_ptr()

    seq = nn.Sequential(nn.Linear(7, 10), nn.Sigmoid(), nn.Linear(10, 3), nn.Softmax(dim=-1)).double()
    fast = FastFFNN.from_module(seq)
    assert fast.activation == "sigmoid"
    xb = input_of((5, 7), requires_grad=False)
    torch.testing.assert_close(fast(xb), seq(xb))

    nobias = nn.Sequential(nn.Linear(7, 10, bias=False), nn.ReLU(), nn.Linear(10, 3, bias=False), nn.Softmax(-1))
    fast = FastFFNN.from_module(nobias)
    assert fast.V.bias is None and fast.W.bias is None
    torch.testing.assert_close(fast(xb.float()), nobias(xb.float()))


@pytest.mark.parametrize("module,message", [
    (nn.Sequential(nn.Linear(7, 10), nn.Tanh(), nn.Linear(10, 3)), r"got nn.Sequential\(Linear, Tanh, Linear\)"),
    (nn.Sequential(nn.Linear(7, 10), nn.GELU(), nn.Linear(10, 3), nn.Softmax(-1)), "got GELU"),
    (nn.Sequential(nn.Linear(7, 10), nn.Tanh(), nn.Linear(9, 3), nn.Softmax(-1)), "V has 10 outputs but W takes 9"),
    (nn.Sequential(nn.Linear(7, 10), nn.Tanh(), nn.Linear(10, 3, bias=False), nn.Softmax(-1)), "both have a bias"),
    (nn.Sequential(nn.Conv1d(7, 10, 1), nn.Tanh(), nn.Linear(10, 3), nn.Softmax(-1)), "V must be nn.Linear, got Conv1d"),
    (nn.Linear(3, 4), "expected the lecture's FFNN"),
])
def test_from_module_refuses_anything_else(module, message):
    with pytest.raises(ValueError, match=message):
        FastFFNN.from_module(module)


def _lecture_loop(model, data, epochs, lr):
    """The lecture's training loop, verbatim: one example per step, one-hot gold label, Adam."""
    optimizer = optim.Adam(model.parameters(), lr=lr)
    for epoch in range(0, epochs):
        for (input, gold_label) in data:
            model.zero_grad()
            probs = model.forward(input)
            loss = torch.neg(torch.log(probs)).dot(gold_label)
            loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_lecture_training_loop_gives_the_same_parameters(dtype, tol):
    torch.manual_seed(0)
    stock, fast = stock_and_fast(inp=12, hid=16, out=3, dtype=dtype)
    nn.init.xavier_uniform_(stock.V.weight)
    fast.load_state_dict(stock.state_dict())
    xs = torch.randn(40, 12, dtype=dtype)
    ys = torch.nn.functional.one_hot(torch.randint(0, 3, (40,)), 3).to(dtype)
    data = list(zip(xs, ys))
    _lecture_loop(stock, data, epochs=3, lr=0.01)
    _lecture_loop(fast, data, epochs=3, lr=0.01)
    for (name, a), (_, b) in zip(fast.named_parameters(), stock.named_parameters()):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, name=name: f"{name}: {m}")
    # the parameters really moved: the loop trained something
    assert not torch.allclose(stock.W.bias, FFNN(12, 16, 3).W.bias.to(dtype))


def test_batched_training_with_the_fused_loss_matches_cross_entropy():
    torch.manual_seed(1)
    stock, fast = stock_and_fast(inp=12, hid=16, out=4)
    opt_s = optim.Adam(stock.parameters(), lr=0.01)
    opt_f = optim.Adam(fast.parameters(), lr=0.01)
    for _ in range(20):
        x = torch.randn(32, 12, dtype=torch.float64)
        y = torch.randint(0, 4, (32,))
        opt_s.zero_grad()
        torch.nn.functional.cross_entropy(stock.W(stock.g(stock.V(x))), y).backward()
        opt_s.step()
        opt_f.zero_grad()
        fast.nll_loss(x, y).backward()
        opt_f.step()
    for a, b in zip(fast.parameters(), stock.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
