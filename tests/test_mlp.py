"""FastMLP against the equivalent stock nn.Sequential, in float64, at depths 0, 1 and 3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastffnn
from fastffnn import FastMLP

F64 = torch.float64
ACTS = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def stock_for(sizes, acts, bias=True):
    layers = []
    for i, a in enumerate(acts):
        layers += [nn.Linear(sizes[i], sizes[i + 1], bias=bias, dtype=F64), ACTS[a]()]
    layers += [nn.Linear(sizes[-2], sizes[-1], bias=bias, dtype=F64), nn.Softmax(dim=-1)]
    return nn.Sequential(*layers)


CASES = [([7, 3], []), ([7, 10, 4], ["tanh"]), ([9, 8, 6, 5, 3], ["relu", "sigmoid", "tanh"])]


@pytest.mark.parametrize("sizes,acts", CASES, ids=["depth 0", "depth 1", "depth 3"])
@pytest.mark.parametrize("lead", [(), (1,), (5,), (2, 3), (0,)], ids=["1-D", "one row", "batch", "3-D", "empty"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_loss_and_gradients_match_the_stock_sequential(sizes, acts, lead, bias):
    torch.manual_seed(len(sizes) * 7 + len(lead))
    stock = stock_for(sizes, acts, bias)
    fast = FastMLP(sizes, acts or "tanh", bias=bias, dtype=F64)
    assert list(fast.state_dict()) == list(stock.state_dict())
    fast.load_state_dict(stock.state_dict())
    assert fast.fused()
    x = torch.randn(*lead, sizes[0], dtype=F64)
    y = torch.randint(0, sizes[-1], lead)
    torch.testing.assert_close(fast(x), stock(x))
    logits = stock[:-1](x)
    torch.testing.assert_close(fast.log_probs(x), torch.log_softmax(logits, -1))
    if 0 in lead:
        return
    for reduction in ("mean", "sum"):
        ours = fast.nll_loss(x, y, reduction)
        logits = stock[:-1](x)
        want = nn.functional.cross_entropy(logits.reshape(-1, sizes[-1]), y.reshape(-1), reduction=reduction)
        torch.testing.assert_close(ours, want)
        g_ours = torch.autograd.grad(ours, list(fast.parameters()))
        g_want = torch.autograd.grad(want, list(stock.parameters()))
        for a, b in zip(g_ours, g_want):
            torch.testing.assert_close(a, b)


def test_checkpoints_load_both_ways_and_from_module_converts():
    stock = stock_for([6, 5, 4, 3], ["relu", "tanh"])
    fast = FastMLP.from_module(stock)
    x = torch.randn(4, 6, dtype=F64)
    torch.testing.assert_close(fast(x), stock(x))
    back = stock_for([6, 5, 4, 3], ["relu", "tanh"])
    back.load_state_dict(fast.state_dict())
    torch.testing.assert_close(back(x), stock(x))
    logits_only = nn.Sequential(*list(stock)[:-1])
    torch.testing.assert_close(FastMLP.from_module(logits_only)(x), stock(x))
    lecture = fastffnn.FastFFNN(6, 5, 3, dtype=F64)
    torch.testing.assert_close(FastMLP.from_module(lecture)(x), lecture(x))


@pytest.mark.parametrize("bad,words", [
    (lambda: FastMLP([7]), "at least 2 entries"),
    (lambda: FastMLP([7, 0, 3]), "sizes[1] must be a positive int"),
    (lambda: FastMLP([7, 5, 3], ["tanh", "relu"]), "2 activations for 1 hidden layer"),
    (lambda: FastMLP([7, 5, 3], "gelu"), "activation 0 must be one of"),
    (lambda: FastMLP.from_module(nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))),
     "layer 1 must be nn.Tanh, nn.ReLU or nn.Sigmoid, got GELU"),
    (lambda: FastMLP.from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(5, 2))),
     "layer 2 takes 5 inputs but layer 0 gives 4"),
    (lambda: FastMLP.from_module(nn.Sequential(nn.Linear(3, 4), nn.Tanh())), "must be the output nn.Linear"),
    (lambda: FastMLP.from_module(nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0))), "over the last dim"),
    (lambda: FastMLP.from_module(nn.Conv1d(1, 1, 1)), "got Conv1d"),
])
def test_bad_input_names_the_layer(bad, words):
    with pytest.raises(ValueError) as e:
        bad()
    assert words in str(e.value)


def test_a_hook_makes_it_run_the_modules():
    fast = FastMLP([6, 5, 3], dtype=F64)
    fast[0].register_forward_hook(lambda m, i, o: o * 2)
    assert not fast.fused()
    x = torch.randn(2, 6, dtype=F64)
    want = fast[3](fast[2](fast[1](fast[0](x))))  # fast[0]'s hook doubles its output here too
    with pytest.warns(UserWarning, match="unfused"):
        torch.testing.assert_close(fast(x), want)


def test_a_plain_model_runs_the_fused_ops():
    fast = FastMLP([6, 5, 4, 3], dtype=F64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast.nll_loss(torch.randn(4, 6, dtype=F64), torch.tensor([0, 1, 2, 0])).backward()
    counts = {e.key: e.count for e in prof.key_averages()}
    # one native call each way for the whole network, not a call per layer
    assert counts.get("fastffnn::mlp_nll") == 1 and counts.get("fastffnn::mlp_nll_backward") == 1
    assert "fastffnn::linear_act" not in counts and "fastffnn::linear_act_backward" not in counts


def test_a_slice_is_the_plain_sequential_of_those_layers():
    fast = FastMLP([6, 5, 4, 3], dtype=F64)
    body = fast[:-1]
    assert type(body) is torch.nn.Sequential and list(body) == list(fast)[:-1]
    x = torch.randn(2, 6, dtype=F64)
    torch.testing.assert_close(torch.softmax(body(x), -1), fast(x))
    assert list(body.state_dict()) == list(fast.state_dict())
