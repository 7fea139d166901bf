"""Every bad input tried against fastffnn's public API, and the error it gives.

``python tests/bad_inputs.py`` writes the table ``tests/BAD_INPUTS.md`` from these cases;
tests/test_bad_inputs.py checks that each one still raises the error type listed with it, whose
message names the argument and the sizes or values at fault (the words listed with it), never a
crash or a silent answer, and that the table is up to date. Mismatched devices need a GPU and are in tests/test_cuda.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import fastffnn

TABLE = Path(__file__).resolve().parent / "BAD_INPUTS.md"


def _x(*shape, dtype=torch.float32):
    return torch.ones(*shape, dtype=dtype)


def _net(in_f=4, hid=5, out=3):
    return _x(hid, in_f), _x(hid), _x(out, hid), _x(out)


def _model():
    return fastffnn.FastFFNN(4, 5, 3)


def _state(**changes):
    state = _model().state_dict()
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    return state


def _train_step(opt_factory, x=None, y=None, reduction="mean"):
    model = _model()
    return model.train_step(_x(4) if x is None else x, torch.tensor(1) if y is None else y, opt_factory(model),
                            reduction)


CASES = [
    # (public function, bad input, call, the error type, what its message must name)
    ("linear_act", "input is a list", lambda: fastffnn.linear_act([1.0] * 4, _x(5, 4)), TypeError, ['input', 'Tensor', 'list']),
    ("linear_act", "weight is None", lambda: fastffnn.linear_act(_x(3, 4), None), TypeError, ['weight', 'Tensor', 'NoneType']),
    ("linear_act", "input has 6 features, weight expects 4", lambda: fastffnn.linear_act(_x(3, 6), _x(5, 4)), ValueError, ['input', '6 features', 'weight', '[5, 4]']),
    ("linear_act", "bias of shape [4] for 5 outputs", lambda: fastffnn.linear_act(_x(3, 4), _x(5, 4), _x(4)), ValueError, ['bias', '[5]', '[4]']),
    ("linear_act", "weight is 1-D", lambda: fastffnn.linear_act(_x(3, 4), _x(4)), ValueError, ['weight', '2-D', '[4]']),
    ("linear_act", "input is 0-d", lambda: fastffnn.linear_act(torch.tensor(1.0), _x(5, 4)), ValueError, ['input', '0-d']),
    ("linear_act", "integer input", lambda: fastffnn.linear_act(torch.ones(3, 4, dtype=torch.int64),
                                                                torch.ones(5, 4, dtype=torch.int64)), TypeError, ['input', 'float32', 'Long']),
    ("linear_act", "float16 input on the CPU", lambda: fastffnn.linear_act(_x(3, 4, dtype=torch.float16),
                                                                           _x(5, 4, dtype=torch.float16)), TypeError, ['input', 'Half', 'cpu']),
    ("linear_act", "float32 input, float64 weight", lambda: fastffnn.linear_act(_x(3, 4), _x(5, 4, dtype=torch.float64)), TypeError, ['weight', 'input', 'Double', 'Float']),
    ("linear_act", "activation 'gelu'", lambda: fastffnn.linear_act(_x(3, 4), _x(5, 4), None, "gelu"), ValueError, ['activation', 'gelu']),
    ("linear_act", "activation is an int", lambda: fastffnn.linear_act(_x(3, 4), _x(5, 4), None, 3), TypeError, ['activation', 'str', 'int']),
    ("linear_softmax", "log is a string", lambda: fastffnn.linear_softmax(_x(3, 4), _x(5, 4), None, "yes"), TypeError, ['log', 'bool', 'str']),
    ("softmax_nll", "class index 3 of 3 classes", lambda: fastffnn.softmax_nll(_x(2, 3), torch.tensor([0, 3])), IndexError, ['target', '3', '3 classes']),
    ("softmax_nll", "negative class index", lambda: fastffnn.softmax_nll(_x(2, 3), torch.tensor([-1, 0])), IndexError, ['target', '-1', '3 classes']),
    ("softmax_nll", "index target of shape [3] for 2 rows", lambda: fastffnn.softmax_nll(_x(2, 3),
                                                                                       torch.tensor([0, 1, 2])), ValueError, ['target', '[2]', '[3]']),
    ("softmax_nll", "probability target of shape [2, 4] for 3 classes", lambda: fastffnn.softmax_nll(_x(2, 3),
                                                                                                   _x(2, 4)), ValueError, ['target', '[2, 3]', '[2, 4]']),
    ("softmax_nll", "reduction 'avg'", lambda: fastffnn.softmax_nll(_x(2, 3), torch.tensor([0, 1]), "avg"), ValueError, ['reduction', 'avg']),
    ("softmax_nll", "logits with 0 classes", lambda: fastffnn.softmax_nll(_x(2, 0), torch.tensor([0, 0])), ValueError, ['logits', '[2, 0]']),
    ("ffnn", "W takes 6 inputs, V gives 5", lambda: fastffnn.ffnn(_x(2, 4), _x(5, 4), None, _x(3, 6), None), ValueError, ['hidden', '5 features', 'W_weight', '[3, 6]']),
    ("ffnn", "W_weight is a string", lambda: fastffnn.ffnn(_x(2, 4), _x(5, 4), None, "W", None), TypeError, ['W_weight', 'Tensor', 'str']),
    ("ffnn_nll", "target rows do not match the input's", lambda: fastffnn.ffnn_nll(_x(2, 4), *_net(),
                                                                                   torch.tensor([0, 1, 2])), ValueError, ['target', '[2]', '[3]']),
    ("FastFFNN", "activation 'gelu'", lambda: fastffnn.FastFFNN(4, 5, 3, activation="gelu"), ValueError, ['activation', 'gelu']),
    ("FastFFNN.forward", "input with 7 features for 4", lambda: _model()(_x(2, 7)), ValueError, ['input', '7 features', 'V_weight', '[5, 4]']),
    ("FastFFNN.forward", "input is a string", lambda: _model()("abc"), TypeError, ['input', 'Tensor', 'str']),
    ("FastFFNN.layer_parameters", "V replaced by an nn.Sequential", lambda: setattr(
        m := _model(), "V", nn.Sequential(nn.Linear(4, 5))) or m.layer_parameters(), TypeError, ['V', 'nn.Linear', 'Sequential']),
    ("FastFFNN.activation", "g replaced by nn.GELU", lambda: setattr(m := _model(), "g", nn.GELU()) or m.activation, ValueError, ['activation', 'GELU']),
    ("FastFFNN.from_module", "an nn.Linear", lambda: fastffnn.FastFFNN.from_module(nn.Linear(4, 3)), ValueError, ['from_module', 'Linear']),
    ("FastFFNN.load_state_dict", "V.weight of shape [6, 4]", lambda: _model().load_state_dict(
        _state(**{"V.weight": _x(6, 4)})), RuntimeError, ['V.weight', '[6, 4]', '[5, 4]']),
    ("FastFFNN.load_state_dict", "W.bias missing", lambda: _model().load_state_dict(_state(**{"W.bias": None})), RuntimeError, ['W.bias', 'Missing']),
    ("FastFFNN.load_state_dict", "V.weight in float64", lambda: _model().load_state_dict(
        _state(**{"V.weight": _x(5, 4, dtype=torch.float64)})), RuntimeError, ['V.weight', 'float64', 'float32', '(5, 4)']),
    ("optim.Adam", "lr=-1", lambda: fastffnn.optim.Adam(_model().parameters(), lr=-1), ValueError, ['learning rate', '-1']),
    ("optim.Adam", "betas=(1.0, 0.9)", lambda: fastffnn.optim.Adam(_model().parameters(), betas=(1.0, 0.9)), ValueError, ['betas', '(1.0, 0.9)']),
    ("optim.Adam", "fused=True", lambda: fastffnn.optim.Adam(_model().parameters(), fused=True), ValueError, ['fused=True']),
    ("softmax_nll", "uint64 class indices", lambda: fastffnn.softmax_nll(_x(2, 3), torch.tensor([0, 2**63 + 1], dtype=torch.uint64)),
     TypeError, ['target', 'UInt64', '.long()']),
    ("FastFFNN.train_step", "a torch.optim.Adam", lambda: _train_step(lambda m: torch.optim.Adam(m.parameters())), TypeError, ['train_step', 'fastffnn.optim.Adam', 'got Adam']),
    ("FastFFNN.train_step", "reduction 'none'", lambda: _train_step(
        lambda m: fastffnn.optim.Adam(m.parameters()), reduction="none"), ValueError, ['reduction', "'none'"]),
    ("FastFFNN.train_step", "input is a list", lambda: _train_step(
        lambda m: fastffnn.optim.Adam(m.parameters()), x=[1.0] * 4), TypeError, ['input', 'Tensor', 'list']),
    ("FastFFNN.train_step", "an optimizer over other parameters", lambda: _train_step(
        lambda m: fastffnn.optim.Adam(_model().parameters())), ValueError, ['optimizer', "model's parameters"]),
    ("FastFFNN.train_step", "class index 7 of 3 classes", lambda: _train_step(
        lambda m: fastffnn.optim.Adam(m.parameters()), y=torch.tensor(7)), IndexError, ['target', '7', '3 classes']),
    ("FastFFNN.train_step", "target on meta, model on the CPU", lambda: _train_step(
        lambda m: fastffnn.optim.Adam(m.parameters()), y=torch.tensor(1, device="meta")), ValueError,
     ['ffnn_nll_adam_step_', 'target', 'meta', 'cpu']),
    ("FastFFNN.train_step", "input on meta, model on the CPU", lambda: _train_step(
        lambda m: fastffnn.optim.Adam(m.parameters()), x=_x(4).to("meta")), ValueError,
     ['ffnn_nll_adam_step_', 'V_weight', 'meta', 'cpu']),
    # the network of any depth
    ("mlp", "no layers", lambda: fastffnn.mlp(_x(2, 4), [], [], []), ValueError, ['mlp', 'at least one layer']),
    ("mlp", "weights[1] expects 6 inputs, layer 0 gives 5", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(3, 6)], [None, None], ["tanh"]), ValueError,
     ['weights[1]', 'the output of layer 0', '5 features', '[3, 6]']),
    ("mlp", "a width of 0 in layer 1", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(0, 5), _x(3, 0)], [None] * 3, ["tanh", "tanh"]), ValueError,
     ['weights[1]', 'layer 1', 'width']),
    ("mlp", "2 activations for 1 hidden layer", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(3, 5)], [None, None], ["tanh", "relu"]), ValueError,
     ['2 activations', '1 hidden layer']),
    ("mlp", "activations[0] is 'gelu'", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(3, 5)], [None, None], ["gelu"]), ValueError, ['activations[0]', 'gelu']),
    ("mlp", "biases[1] of shape [5] for 3 outputs", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(3, 5)], [_x(5), _x(5)], ["tanh"]), ValueError, ['biases[1]', '[3]', '[5]']),
    ("mlp", "weights[1] is float64, input float32", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(3, 5, dtype=torch.float64)], [None, None], ["tanh"]), TypeError,
     ['weights[1]', 'Double', 'Float']),
    ("mlp", "weights[1] on meta, input on the CPU", lambda: fastffnn.mlp(
        _x(2, 4), [_x(5, 4), _x(3, 5).to("meta")], [None, None], ["tanh"]), ValueError, ['weights[1]', 'meta', 'cpu']),
    ("mlp", "weights is a tensor, not a list", lambda: fastffnn.mlp(_x(2, 4), _x(5, 4), [None], []), TypeError,
     ['weights', 'list', 'Tensor']),
    ("mlp_nll", "class index 3 of 3 classes", lambda: fastffnn.mlp_nll(
        _x(2, 4), [_x(5, 4), _x(3, 5)], [None, None], torch.tensor([0, 3]), ["tanh"]), IndexError,
     ['target', '3', '3 classes']),
    ("FastMLP", "sizes [4]", lambda: fastffnn.FastMLP([4]), ValueError, ['sizes', 'at least 2']),
    ("FastMLP", "a width of 0", lambda: fastffnn.FastMLP([4, 0, 3]), ValueError, ['sizes[1]', '0']),
    ("FastMLP", "2 activations for 1 hidden layer", lambda: fastffnn.FastMLP([4, 5, 3], ["tanh", "relu"]),
     ValueError, ['2 activations', '1 hidden layer']),
    ("FastMLP", "input has 6 features, layer 0 expects 4", lambda: fastffnn.FastMLP([4, 5, 3])(_x(2, 6)), ValueError,
     ['input', '6 features', 'weights[0]']),
    ("FastMLP.from_module", "layer 1 is nn.GELU", lambda: fastffnn.FastMLP.from_module(
        nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3))), ValueError, ['layer 1', 'GELU']),
    ("FastMLP.from_module", "layer 2 takes 6 inputs, layer 0 gives 5", lambda: fastffnn.FastMLP.from_module(
        nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(6, 3))), ValueError, ['layer 2', '6 inputs', '5']),
    ("optim.Adam.train_step", "FastMLP, target on meta", lambda: (lambda m: fastffnn.optim.Adam(
        m.parameters()).train_step(m, _x(4), torch.tensor(1, device="meta")))(fastffnn.FastMLP([4, 5, 5, 3])),
     ValueError, ['mlp_nll_adam_step_', 'target', 'meta', 'cpu']),
]

# RuntimeError is torch's own for load_state_dict; fastffnn's checks raise the other three.
CLEAR_ERRORS = (TypeError, ValueError, IndexError, RuntimeError)


def outcome(call) -> tuple[str, str]:
    """(error type, its message on one line), or ('no error', '') if the call went through."""
    try:
        call()
    except CLEAR_ERRORS as e:
        return type(e).__name__, " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return "no error", ""


def table() -> str:
    lines = ["# Bad inputs and the errors they give", "",
             "Generated by `python tests/bad_inputs.py` from the cases in `tests/bad_inputs.py`;",
             "`tests/test_bad_inputs.py` fails when this table no longer matches what fastffnn does.", "",
             "| function | bad input | error | message |", "|---|---|---|---|"]
    for function, what, call, _kind, _words in CASES:
        kind, message = outcome(call)
        lines.append(f"| `{function}` | {what} | {kind} | {message.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    TABLE.write_text(table())
    print(f"wrote {TABLE}")
