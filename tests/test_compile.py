"""torch.compile(fullgraph=True) traces every fused op (through its fake kernel) without a graph break.

For each op, and for FastFFNN's forward and training step: the compiled
result equals eager (values and gradients), torch._dynamo.explain counts one
graph and no break, and fullgraph=True compiles (it raises on any break).
opcheck's AOT-dispatch checks run in test_registration.py.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

import fastffnn
from helpers import input_of, layer, targets


def _ops_cases():
    x = input_of((4, 7), requires_grad=False)
    Vw, Vb = layer(10, 7)
    Ww, Wb = layer(5, 10)
    y = targets("index", (4,), 5)
    probs = targets("probs", (4,), 5)
    z = input_of((4, 5))
    return {
        "linear_act": (lambda: fastffnn.linear_act(x, Vw, Vb, "relu").sum(), [Vw, Vb]),
        "linear_softmax": (lambda: fastffnn.linear_softmax(x, Vw, Vb, log=True).sum(), [Vw, Vb]),
        "softmax_nll": (lambda: fastffnn.softmax_nll(z, y) + fastffnn.softmax_nll(z, probs, "sum"), [z]),
        "ffnn": (lambda: fastffnn.ffnn(x, Vw, Vb, Ww, Wb, "sigmoid").pow(2).sum(), [Vw, Vb, Ww, Wb]),
        "ffnn_nll": (lambda: fastffnn.ffnn_nll(x, Vw, Vb, Ww, Wb, y), [Vw, Vb, Ww, Wb]),
    }


@pytest.mark.parametrize("name", list(_ops_cases()))
def test_every_op_compiles_without_graph_breaks(name):
    torch._dynamo.reset()
    fn, leaves = _ops_cases()[name]
    explanation = torch._dynamo.explain(fn)()
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    got = compiled()
    got_grads = torch.autograd.grad(got, leaves)
    want = fn()
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, torch.autograd.grad(want, leaves)):
        torch.testing.assert_close(a, b)


def test_compiled_forward_and_loss_match_eager():
    torch._dynamo.reset()
    model = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    x = input_of((4, 7), requires_grad=False)
    y = torch.randint(0, 5, (4,))

    def loss_fn(x, y):
        return model.nll_loss(x, y) - torch.log(model(x)).mean()

    compiled = torch.compile(loss_fn, fullgraph=True)  # fullgraph: any graph break raises
    compiled(x, y).backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss_fn(x, y).backward()
    for a, b in zip(compiled_grads, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


@pytest.mark.parametrize("lead", [(), (16,)])
def test_compiled_model_training_steps_match_eager(lead):
    """The lecture's training step with torch.compile(model, fullgraph=True): same parameters after 5 steps."""
    torch._dynamo.reset()
    eager = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    twin = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, fullgraph=True)
    assert torch._dynamo.explain(twin)(input_of((*lead, 7), requires_grad=False)).graph_break_count == 0
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, twin)]
    for _ in range(5):
        x = input_of((*lead, 7), requires_grad=False)
        gold = torch.nn.functional.one_hot(torch.randint(0, 5, lead), 5).double()
        for forward, opt in zip((eager, compiled), opts):
            opt.zero_grad()
            loss = torch.neg(torch.log(forward(x))).mul(gold).sum()
            loss.backward()
            opt.step()
    for a, b in zip(eager.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["linear_act", "linear_softmax", "softmax_nll", "ffnn", "ffnn_nll"])
def test_every_op_traces_with_symbolic_shapes(name):
    # dynamic=True gives the fake kernels symbolic sizes, and the C++ argument
    # checks they call (csrc/checks.cpp) must read those without specialising
    # them: three batch sizes, one compilation, each result equal to eager.
    Vw, Vb = layer(10, 7)
    Ww, Wb = layer(5, 10)
    fns = {
        "linear_act": lambda x, y: fastffnn.linear_act(x, Vw, Vb, "relu").sum(),
        "linear_softmax": lambda x, y: fastffnn.linear_softmax(x, Vw, Vb, log=True).sum(),
        "softmax_nll": lambda x, y: fastffnn.softmax_nll(x[:, :5], y),
        "ffnn": lambda x, y: fastffnn.ffnn(x, Vw, Vb, Ww, Wb, "sigmoid").pow(2).sum(),
        "ffnn_nll": lambda x, y: fastffnn.ffnn_nll(x, Vw, Vb, Ww, Wb, y),
    }
    fn = fns[name]
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, dynamic=True, fullgraph=True)
    for batch in (4, 6, 9):
        x = input_of((batch, 7), requires_grad=False)
        y = targets("index", (batch,), 5)
        torch.testing.assert_close(compiled(x, y), fn(x, y))
    assert counter.frame_count == 1


def test_a_bad_input_fails_alike_with_symbolic_shapes():
    # The same check and words as eager, with the sizes printed as symbols.
    Vw, Vb = layer(10, 7)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, b: fastffnn.linear_act(x, Vw, b), backend="aot_eager", dynamic=True)
    words = r"ValueError\('fastffnn.linear_act: bias must have shape \[\w+\] to match weight of shape \[\w+, \w+\], got \[\w+\]"
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError, match=words):
        compiled(input_of((4, 7), requires_grad=False), torch.randn(9, dtype=torch.float64))


@pytest.mark.parametrize("how", ["train_step", "step"])
def test_a_compiled_step_under_an_lr_scheduler_compiles_once(how):
    # With the learning rate as a tensor (as torch.optim.Adam takes it), the
    # scheduler changes it in place and the compiled step reads it as an
    # input: once the first steps have created the optimizer's state, new
    # learning rates compile nothing, and the parameters end as stock's.
    import copy

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = fastffnn.FastFFNN(7, 10, 5, dtype=torch.float64)
    twin = copy.deepcopy(model)
    opt = fastffnn.optim.Adam(model.parameters(), lr=torch.tensor(0.01, dtype=torch.float64))
    ref = torch.optim.Adam(twin.parameters(), lr=0.01)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.7) for o in (opt, ref)]
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")

    def fast_step(x, y):
        if how == "train_step":
            return model.train_step(x, y, opt)
        opt.zero_grad()
        loss = model.nll_loss(x, y)
        loss.backward()
        opt.step()
        return loss

    compiled = torch.compile(fast_step, backend=counter, fullgraph=(how == "train_step"))
    for i in range(10):
        if i == 3:  # past the first calls, which create the optimizer's state
            warm = counter.frame_count
        x = input_of((4, 7), requires_grad=False)
        y = targets("index", (4,), 5)
        compiled(x, y)
        ref.zero_grad()
        twin.nll_loss(x, y).backward()
        ref.step()
        for s in scheds:
            s.step()
    assert counter.frame_count == warm, (warm, counter.frame_count)  # seven new learning rates, no recompile
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(ref.param_groups[0]["lr"], rel=1e-12)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
