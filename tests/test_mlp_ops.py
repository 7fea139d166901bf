"""The network of any depth: the ops mlp / mlp_nll (and their backward and training step) and FastMLP through
them, against stock nn.Sequential in float64, on the CPU build.

The CUDA kernels of the same ops are tests/test_cuda.py's (test_mlp), on a GPU or the CUDA emulator.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fastffnn
from fastffnn import FastMLP, ops

F64 = torch.float64
ACT = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}
MODULE = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def network(sizes, bias=True, dtype=F64, requires_grad=True):
    weights = [(torch.randn(o, i, dtype=dtype) / i ** 0.5).requires_grad_(requires_grad)
               for i, o in zip(sizes[:-1], sizes[1:])]
    biases = [torch.randn(o, dtype=dtype).requires_grad_(requires_grad) if bias else None for o in sizes[1:]]
    return weights, biases


def ref_logits(x, weights, biases, acts):
    for w, b, a in zip(weights[:-1], biases[:-1], acts):
        x = ACT[a](F.linear(x, w, b))
    return F.linear(x, weights[-1], biases[-1])


def ref_nll(logits, target, reduction="mean"):
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, logits.shape[-1])
    t = target.reshape(-1) if not target.is_floating_point() else target.reshape(flat.shape)
    loss = F.cross_entropy(flat, t, reduction=reduction)
    return loss.reshape(lead) if reduction == "none" else loss


def leaves(x, weights, biases, target=None):
    out = [t for t in (x, *weights, *biases) if t is not None and t.requires_grad]
    if target is not None and target.requires_grad:
        out.append(target)
    return out


SIZES = [  # depth 1 to 4, widths of 1, odd widths, and widths across the CPU's 4- and 16-wide tiles
    ((7, 3), []), ((1, 1, 1), ["sigmoid"]), ((9, 6, 5, 4), ["relu", "sigmoid"]),
    ((17, 15, 16, 33, 2), ["tanh", "relu", "tanh"]), ((300, 128, 128, 128, 5), ["tanh", "tanh", "tanh"]),
]
# one example (1-D and one row), the one-row loops' edge, the small-batch products' edges (64 rows) and beyond
LEADS = [(), (1,), (2,), (0,), (2, 3), (64,), (65,)]


@pytest.mark.parametrize("sizes,acts", SIZES)
@pytest.mark.parametrize("lead", LEADS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_loss_and_gradients_match_stock(sizes, acts, lead, bias):
    weights, biases = network(sizes, bias)
    x = torch.randn(*lead, sizes[0], dtype=F64, requires_grad=True)
    z = ref_logits(x, weights, biases, acts)
    for log in (False, True):
        ours = ops.mlp(x, weights, biases, acts, log)
        want = torch.log_softmax(z, -1) if log else torch.softmax(z, -1)
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
        seed = torch.randn_like(want)
        for a, b in zip(torch.autograd.grad(ours, leaves(x, weights, biases), seed),
                        torch.autograd.grad(want, leaves(x, weights, biases), seed, retain_graph=True)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for kind in ("index", "probs"):
        y = (torch.randint(0, sizes[-1], lead) if kind == "index"
             else torch.softmax(torch.randn(*lead, sizes[-1], dtype=F64), -1).requires_grad_())
        for reduction in ("mean", "sum", "none"):
            ours = ops.mlp_nll(x, weights, biases, y, acts, reduction)
            want = ref_nll(z, y, reduction)
            torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12, equal_nan=True)
            if x.numel() == 0:
                continue
            seed = torch.randn_like(want)
            for a, b in zip(torch.autograd.grad(ours, leaves(x, weights, biases, y), seed),
                            torch.autograd.grad(want, leaves(x, weights, biases, y), seed, retain_graph=True)):
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_saved_activations_carry_no_gradient():
    # outputs the backward ignores must not look differentiable: a loss built on them would get nothing
    weights, biases = network((6, 5, 4, 3))
    x, y = torch.randn(2, 6, dtype=F64), torch.tensor([0, 2])
    _, hidden = torch.ops.fastffnn.mlp(x, weights, biases, ["tanh", "relu"], False)
    _, hidden_nll, log_probs = torch.ops.fastffnn.mlp_nll(x, weights, biases, y, ["tanh", "relu"], "mean")
    assert not any(h.requires_grad for h in [*hidden, *hidden_nll, log_probs])


def test_strided_inputs_and_weights():
    weights, biases = network((8, 6, 5, 4))
    # a transposed weight, a sliced bias and a sliced, non-contiguous input
    w0 = torch.randn(8, 6, dtype=F64).t().requires_grad_()
    weights = [w0, *weights[1:]]
    b1 = torch.randn(10, dtype=F64)[::2].requires_grad_()
    biases = [biases[0], b1, biases[2]]
    acts = ["relu", "tanh"]
    for rows in (1, 7):
        x = torch.randn(rows, 16, dtype=F64)[:, ::2].requires_grad_()
        assert not x.is_contiguous() and not w0.is_contiguous()
        y = torch.randint(0, 4, (rows,))
        ours, want = ops.mlp_nll(x, weights, biases, y, acts), ref_nll(ref_logits(x, weights, biases, acts), y)
        torch.testing.assert_close(ours, want, rtol=1e-12, atol=1e-12)
        for a, b in zip(torch.autograd.grad(ours, leaves(x, weights, biases)),
                        torch.autograd.grad(want, leaves(x, weights, biases))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_only_the_gradients_asked_for_are_formed():
    weights, biases = network((6, 5, 4, 3))
    x = torch.randn(4, 6, dtype=F64)
    # a frozen first layer: its parameters get nothing, the rest match stock
    weights[0].requires_grad_(False)
    biases[0].requires_grad_(False)
    y = torch.tensor([0, 2, 1, 0])
    loss = ops.mlp_nll(x, weights, biases, y, ["tanh", "relu"])
    want = ref_nll(ref_logits(x, weights, biases, ["tanh", "relu"]), y)
    trainable = [*weights[1:], *biases[1:]]
    for a, b in zip(torch.autograd.grad(loss, trainable), torch.autograd.grad(want, trainable)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the backward op leaves [0]-shaped placeholders where the mask says no
    with torch.no_grad():
        _, hidden, lp = torch.ops.fastffnn.mlp_nll(x, weights, biases, y, ["tanh", "relu"], "mean")
    gx, gw, gb, gt = torch.ops.fastffnn.mlp_nll_backward(
        torch.tensor(1.0, dtype=F64), x, weights, hidden, lp, y, ["tanh", "relu"], "mean",
        [False, False, True, False, False, False, True, False])
    assert gx.shape == (0,) and gw[0].shape == (0,) and gw[2].shape == (0,) and gb[1].shape == (0,)
    assert gw[1].shape == weights[1].shape and gb[2].shape == biases[2].shape and gt.shape == (0,)


@pytest.mark.parametrize("sizes,acts", [((3, 4), []), ((3, 4, 5, 3), ["tanh", "sigmoid"])])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_and_gradgradcheck(sizes, acts, bias):
    weights, biases = network(sizes, bias)
    x = torch.randn(2, sizes[0], dtype=F64, requires_grad=True)
    y = torch.softmax(torch.randn(2, sizes[-1], dtype=F64), -1).requires_grad_()
    n, nb = len(weights), sum(b is not None for b in biases)

    def split(args):
        ws, bs = list(args[1:1 + n]), list(args[1 + n:1 + n + nb])
        return args[0], ws, bs if bias else [None] * n

    def net(*args):
        x_, ws, bs = split(args)
        return ops.mlp(x_, ws, bs, acts, True)

    def loss(*args):
        x_, ws, bs = split(args[:-1])
        return ops.mlp_nll(x_, ws, bs, args[-1], acts, "sum")

    inputs = (x, *weights, *[b for b in biases if b is not None])
    assert torch.autograd.gradcheck(net, inputs)
    assert torch.autograd.gradgradcheck(net, inputs)
    assert torch.autograd.gradcheck(loss, (*inputs, y))
    assert torch.autograd.gradgradcheck(loss, (*inputs, y))


def test_jvp_vmap_and_jacrev_of_fastmlp_match_the_sequential():
    fast = FastMLP([5, 6, 4, 3], ["tanh", "sigmoid"], dtype=F64)
    stock = nn.Sequential(*copy.deepcopy(list(fast)))
    x, t = torch.randn(4, 5, dtype=F64), torch.randn(4, 5, dtype=F64)
    for a, b in zip(torch.func.jvp(fast, (x,), (t,)), torch.func.jvp(stock, (x,), (t,))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    xs = torch.randn(3, 4, 5, dtype=F64)
    torch.testing.assert_close(torch.func.vmap(fast)(xs), torch.func.vmap(stock)(xs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.func.jacrev(fast)(x[0]), torch.func.jacrev(stock)(x[0]), rtol=1e-10,
                               atol=1e-12)
    y = torch.tensor([0, 2, 1, 1])
    grads = torch.func.grad(lambda p: torch.func.functional_call(fast, p, (x,)).log().gather(1, y[:, None]).sum())(
        dict(fast.named_parameters()))
    want = torch.func.grad(lambda p: torch.func.functional_call(stock, p, (x,)).log().gather(1, y[:, None]).sum())(
        dict(stock.named_parameters()))
    for k in want:
        torch.testing.assert_close(grads[k], want[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sizes,acts", [((12, 7, 3), ["tanh"]), ((12, 7, 6, 3), ["relu", "tanh"]), ((12, 3), [])])
@pytest.mark.parametrize("lead", [(), (1,), (8,), (70,)])
@pytest.mark.parametrize("bias", [True, False])
def test_train_step_is_the_stock_adam_loop(sizes, acts, lead, bias):
    fast = FastMLP(sizes, acts, bias=bias, dtype=F64)
    stock = nn.Sequential(*copy.deepcopy(list(fast))[:-1])
    opt = fastffnn.optim.Adam(fast.parameters(), lr=0.05, weight_decay=0.01, amsgrad=True)
    ref = torch.optim.Adam(stock.parameters(), lr=0.05, weight_decay=0.01, amsgrad=True)
    for step in range(4):
        x = torch.randn(*lead, sizes[0], dtype=F64)
        y = torch.randint(0, sizes[-1], lead) if step % 2 else torch.softmax(torch.randn(*lead, sizes[-1],
                                                                                         dtype=F64), -1)
        loss = opt.train_step(fast, x, y)
        ref.zero_grad()
        want = ref_nll(stock(x), y)
        want.backward()
        ref.step()
        torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(fast.parameters(), stock.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(opt.state.values(), ref.state.values()):
        for key in b:
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12)


def test_train_step_is_one_native_call():
    fast = FastMLP([6, 5, 4, 3], dtype=F64)
    opt = fastffnn.optim.Adam(fast.parameters())
    for lead in ((), (9,)):
        x, y = torch.randn(*lead, 6, dtype=F64), torch.randint(0, 3, lead)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.train_step(fast, x, y)
        names = {e.key: e.count for e in prof.key_averages()}
        assert names.get("fastffnn::mlp_nll_adam_step_") == 1
        assert not any(n.startswith("fastffnn::") and n != "fastffnn::mlp_nll_adam_step_" for n in names), names


def test_train_step_with_a_layer_without_bias_or_frozen_takes_autograd():
    fast = FastMLP([6, 5, 4, 3], dtype=F64)
    stock = nn.Sequential(*copy.deepcopy(list(fast))[:-1])
    for m in (fast, stock):
        m[2].bias = None
        m[0].weight.requires_grad_(False)
    opt = fastffnn.optim.Adam(fast.parameters(), lr=0.1)
    ref = torch.optim.Adam(stock.parameters(), lr=0.1)
    for _ in range(3):
        x, y = torch.randn(5, 6, dtype=F64), torch.randint(0, 3, (5,))
        opt.train_step(fast, x, y)
        ref.zero_grad()
        ref_nll(stock(x), y).backward()
        ref.step()
    for a, b in zip(fast.parameters(), stock.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert fast[0].weight not in opt.state


def test_results_do_not_depend_on_the_thread_count():
    fast = FastMLP([300, 128, 128, 5], dtype=torch.float32)
    x, y = torch.randn(48, 300), torch.randint(0, 5, (48,))
    threads = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            fast.zero_grad()
            loss = fast.nll_loss(x, y)
            loss.backward()
            runs.append([loss.detach().clone(), *[p.grad.clone() for p in fast.parameters()]])
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            assert torch.equal(a, b)


@pytest.mark.parametrize("call,error,words", [
    (lambda x, ws, bs: ops.mlp(x, [], [], []), ValueError, ["mlp", "at least one layer"]),
    (lambda x, ws, bs: ops.mlp(x, ws, bs[:2], ["tanh", "tanh"]), ValueError, ["3 weights", "2 biases"]),
    (lambda x, ws, bs: ops.mlp(x, ws, bs, ["tanh"]), ValueError, ["1 activations", "2 hidden layers"]),
    (lambda x, ws, bs: ops.mlp(x, ws, bs, ["tanh", "gelu"]), ValueError, ["activations[1]", "gelu"]),
    (lambda x, ws, bs: ops.mlp(x, [ws[0], ws[2], ws[1]], bs, ["tanh", "tanh"]), ValueError,
     ["weights[1]", "the output of layer 0", "5 features", "[3, 4]"]),
    (lambda x, ws, bs: ops.mlp(x, ws, [bs[0], bs[2], bs[1]], ["tanh", "tanh"]), ValueError, ["biases[1]", "[4]"]),
    (lambda x, ws, bs: ops.mlp(x, [ws[0], torch.ones(0, 5), torch.ones(3, 0)], [None] * 3, ["tanh", "tanh"]),
     ValueError, ["weights[1]", "layer 1", "width"]),
    (lambda x, ws, bs: ops.mlp(x, [ws[0], ws[1].double(), ws[2]], bs, ["tanh", "tanh"]), TypeError,
     ["weights[1]", "Double", "Float"]),
    (lambda x, ws, bs: ops.mlp(x, [ws[0], ws[1].to("meta"), ws[2]], bs, ["tanh", "tanh"]), ValueError,
     ["weights[1]", "meta", "cpu"]),
    (lambda x, ws, bs: ops.mlp(x[:, :5], ws, bs, ["tanh", "tanh"]), ValueError, ["input", "5 features", "[5, 6]"]),
    (lambda x, ws, bs: ops.mlp(x, ws[0], bs, ["tanh"]), TypeError, ["weights", "list", "Tensor"]),
    (lambda x, ws, bs: ops.mlp(x, ws, bs, "tanh"), TypeError, ["activations", "list", "str"]),
    (lambda x, ws, bs: ops.mlp_nll(x, ws, bs, torch.tensor([0, 3]), ["tanh", "tanh"]), IndexError,
     ["target", "3", "3 classes"]),
    (lambda x, ws, bs: ops.mlp_nll(x, ws, bs, torch.tensor([0, 1, 2]), ["tanh", "tanh"]), ValueError,
     ["target", "[2]", "[3]"]),
])
def test_bad_input_names_the_layer_and_the_sizes_in_eager_and_compiled_code(call, error, words):
    x = torch.randn(2, 6)
    ws = [torch.randn(5, 6), torch.randn(4, 5), torch.randn(3, 4)]
    bs = [torch.randn(5), torch.randn(4), torch.randn(3)]
    with pytest.raises(error) as eager:
        call(x, ws, bs)
    for w in words:
        assert w in str(eager.value), (w, str(eager.value))
    if error is IndexError:
        return  # the class indices are read where the kernels read them, which a trace does not
    torch._dynamo.reset()
    with pytest.raises(Exception) as traced:
        torch.compile(call, fullgraph=True, backend="aot_eager")(x, ws, bs)
    for w in words:
        assert w in str(traced.value), (w, str(traced.value))


def test_fastmlp_compiles_with_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    fast = FastMLP([10, 8, 6, 4], ["relu", "tanh"], dtype=F64)
    x, y = torch.randn(5, 10, dtype=F64), torch.randint(0, 4, (5,))

    def losses(x, y):
        return fast.nll_loss(x, y), fast(x), fast.log_probs(x)

    fast.zero_grad()
    want = losses(x, y)
    want[0].backward()
    want_grads = [p.grad.clone() for p in fast.parameters()]
    fast.zero_grad()
    got = torch.compile(losses, fullgraph=True, backend="aot_eager")(x, y)
    got[0].backward()  # through the compiled graph's backward: mlp_nll_backward
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for p, g in zip(fast.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)
    # the whole training step too, one op in the graph
    stock = copy.deepcopy(fast)
    opt, ref = fastffnn.optim.Adam(fast.parameters()), fastffnn.optim.Adam(stock.parameters())
    compiled = torch.compile(lambda x, y: opt.train_step(fast, x, y), fullgraph=True, backend="aot_eager")
    for _ in range(2):
        torch.testing.assert_close(compiled(x, y), ref.train_step(stock, x, y))
    for a, b in zip(fast.parameters(), stock.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_autocast_on_the_cpu_computes_in_float32():
    fast = FastMLP([6, 5, 4, 3])
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fast(x.float()))


@settings(max_examples=40, deadline=None)
@given(depth=st.integers(1, 4), data=st.data())
def test_any_depth_width_activation_dtype_and_stride(depth, data):
    sizes = data.draw(st.lists(st.integers(1, 20), min_size=depth + 1, max_size=depth + 1))
    acts = data.draw(st.lists(st.sampled_from(["tanh", "relu", "sigmoid"]), min_size=depth - 1, max_size=depth - 1))
    dtype = data.draw(st.sampled_from([torch.float32, F64]))
    rows = data.draw(st.integers(0, 70))
    bias = data.draw(st.booleans())
    strided = data.draw(st.booleans())
    weights, biases = network(sizes, bias, dtype=dtype)
    x = torch.randn(rows, 2 * sizes[0], dtype=dtype)
    x = (x[:, ::2] if strided else x[:, :sizes[0]]).requires_grad_()
    y = torch.randint(0, sizes[-1], (rows,))
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    ours = ops.mlp_nll(x, weights, biases, y, acts, "sum")
    w64 = [w.detach().double().requires_grad_() for w in weights]
    b64 = [b if b is None else b.detach().double().requires_grad_() for b in biases]
    x64 = x.detach().double().requires_grad_()
    want = ref_nll(ref_logits(x64, w64, b64, acts), y, "sum")
    torch.testing.assert_close(ours.double(), want, **tol)
    for a, b in zip(torch.autograd.grad(ours, leaves(x, weights, biases)),
                    torch.autograd.grad(want, leaves(x64, w64, b64))):
        torch.testing.assert_close(a.double(), b, **tol)
