"""The CUDA kernels against stock PyTorch in float64, on both tiers and in every product mode.

Runs on a GPU, and without one on the CUDA emulator (FASTFFNN_BACKEND=emulated, which
tests/test_cuda_emulated.py sets up); skipped otherwise. The harness (tolerances from the
arithmetic, poisoned memory, the emulator's thread schedules) is tests/cuda_harness.py.
Batch sizes in the thousands shrink under the emulator, which runs each CUDA thread as a
fiber, to sizes that still cross the kernels' 32-row tiles and chunk boundaries.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import fastffnn
from fastffnn import _graphs as graphs_module
from fastffnn import reference as ref

from cuda_harness import MODES as MODE_SETTINGS
from cuda_harness import (AVAILABLE, DEVICE, EMULATED, SKIP_REASON, assert_close, assert_same_bits, check,
                          launched_kernels, poisoned_allocations, precision, ref_ffnn, ref_ffnn_nll, ref_linear_act,
                          set_schedule, tolerance, capturing, device_steps, SCHEDULES)

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=SKIP_REASON)

ACTIVATIONS = ["tanh", "relu", "sigmoid"]
MODES = ["float32", "tf32", "bfloat16", "float16"]


def rows(gpu: int, emulated: int) -> int:
    return emulated if EMULATED else gpu


@pytest.fixture(params=["auto", "general", "fused"])
def tier(request):
    previous = fastffnn.set_cuda_tier(request.param)
    yield request.param
    fastffnn.set_cuda_tier(previous)


def network(in_f, hid, out, bias=True):
    Vw = torch.randn(hid, in_f, dtype=torch.float64) / max(in_f, 1) ** 0.5
    Ww = torch.randn(out, hid, dtype=torch.float64) / max(hid, 1) ** 0.5
    Vb = torch.randn(hid, dtype=torch.float64) * 0.5 if bias else None
    Wb = torch.randn(out, dtype=torch.float64) * 0.5 if bias else None
    return [Vw, Vb, Ww, Wb]


def ffnn_hidden(activation, log=False):
    return lambda x, Vw, Vb, Ww, Wb, *_: torch.ops.fastffnn.ffnn(x, Vw, Vb, Ww, Wb, activation, log)[1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_f,hid,out,batch", [
    (1, 1, 1, 1), (7, 100, 5, 33), (300, 100, 2, 0), (300, 255, 63, rows(4096, 95)), (300, 256, 64, rows(4097, 97)),
    (300, 257, 65, 33), (784, 256, 10, rows(4097, 65)), (1025, 257, 1000, 33),
])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ffnn(tier, mode, in_f, hid, out, batch, activation):
    x = torch.randn(batch, in_f, dtype=torch.float64)
    check(lambda *a: fastffnn.ffnn(*a, activation=activation),
          lambda *a, **k: ref_ffnn(*a, activation=activation, **k), [x, *network(in_f, hid, out)], mode,
          K=max(in_f, hid, out, batch), relu_hidden=ffnn_hidden(activation) if activation == "relu" else None)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ffnn_large_batch(tier, activation):
    batch = rows(65537, 1025)
    x = torch.randn(batch, 300, dtype=torch.float64)
    check(lambda *a: fastffnn.ffnn(*a, activation=activation),
          lambda *a, **k: ref_ffnn(*a, activation=activation, **k), [x, *network(300, 100, 5)], "float32",
          K=batch, relu_hidden=ffnn_hidden(activation) if activation == "relu" else None)


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("lead", [(), (3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_ffnn_shapes(tier, log, lead, bias):
    x = torch.randn(*lead, 7, dtype=torch.float64)
    check(lambda *a: fastffnn.ffnn(*a, log=log), lambda *a: ref.ffnn(*a, log=log), [x, *network(7, 100, 5, bias)],
          "float32", K=100)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["index", "probs", "probs-with-grad"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch,bias", [(0, True), (1, True), (33, True), (33, False), (rows(4096, 95), True)])
def test_ffnn_nll(tier, mode, kind, reduction, batch, bias):
    x = torch.randn(batch, 300, dtype=torch.float64)
    y = (torch.randint(0, 5, (batch,)) if kind == "index"
         else torch.softmax(torch.randn(batch, 5, dtype=torch.float64), -1))
    check(lambda *a: fastffnn.ffnn_nll(*a[:5], a[5], reduction=reduction),
          lambda *a, **k: ref_ffnn_nll(*a[:5], a[5], reduction=reduction, **k), [x, *network(300, 100, 5, bias), y],
          mode, K=max(300, batch), constant=(5,) if kind == "probs" else ())


@pytest.mark.parametrize("frozen", [(0,), (0, 1, 2), (0, 1, 2, 3)], ids=["x", "x,V", "x,V,W.weight"])
def test_gradients_only_for_what_requires_them(tier, frozen):
    x = torch.randn(33, 300, dtype=torch.float64)
    params = network(300, 100, 5)
    y = torch.randint(0, 5, (33,))
    check(lambda *a: fastffnn.ffnn(*a), lambda *a: ref.ffnn(*a), [x, *params], "float32", K=300, constant=frozen)
    check(lambda *a: fastffnn.ffnn_nll(*a[:5], a[5]), lambda *a: ref.ffnn_nll(*a[:5], a[5]), [x, *params, y],
          "float32", K=300, constant=frozen)


@pytest.mark.parametrize("mode", ["float64", "float32", "bfloat16", "float16"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch,in_f,out", [(0, 7, 5), (1, 1, 1), (33, 300, 100), (rows(4097, 129), 257, 1000)])
def test_linear_ops(mode, activation, batch, in_f, out):
    x = torch.randn(batch, in_f, dtype=torch.float64)
    w = torch.randn(out, in_f, dtype=torch.float64) / in_f ** 0.5
    b = torch.randn(out, dtype=torch.float64)
    K = max(batch, in_f, out)
    check(lambda *a: fastffnn.linear_act(*a, activation), lambda *a, **k: ref_linear_act(*a, activation, **k),
          [x, w, b], mode, K=K,
          relu_hidden=(lambda x, w, b: fastffnn.linear_act(x, w, b, "relu")) if activation == "relu" else None)
    for log in (False, True):
        check(lambda *a: fastffnn.linear_softmax(*a, log), lambda *a: ref.linear_softmax(*a, log), [x, w, b], mode,
              K=K)


@pytest.mark.parametrize("mode", ["float64", "float32", "bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch,classes", [(0, 5), (1, 1), (33, 2), (rows(4097, 129), 1000)])
def test_softmax_nll(mode, kind, reduction, batch, classes):
    z = torch.randn(batch, classes, dtype=torch.float64) * 3
    y = (torch.randint(0, classes, (batch,)) if kind == "index"
         else torch.softmax(torch.randn(batch, classes, dtype=torch.float64), -1))
    check(lambda *a: fastffnn.softmax_nll(*a, reduction), lambda *a: ref.softmax_nll(*a, reduction), [z, y],
          mode, K=max(batch, classes))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_extreme_values(tier, mode, activation):
    # logits of +-1e4 stay finite; a NaN or an infinity in one row of the input reaches that row's outputs only
    x = torch.randn(35, 20, dtype=torch.float64)
    x[3, 5] = float("nan")
    x[34, 0] = float("inf")
    Vw, Vb, Ww, Wb = network(20, 40, 7)
    Ww = Ww * 1e-2
    Wb = torch.tensor([1e4, -1e4, 0.0, 1e4 - 3, -1e4 + 1, 5.0, -5.0], dtype=torch.float64)  # logits of +-1e4
    dtype = MODE_SETTINGS[mode][0]
    dev = [t.to(dtype).to(DEVICE) for t in (x, Vw, Vb, Ww, Wb)]
    with precision(mode):
        out = fastffnn.ffnn(*dev, activation=activation).double().cpu()
        logp = fastffnn.ffnn(*dev, activation=activation, log=True).double().cpu()
    bad = torch.zeros(35, dtype=torch.bool)
    bad[3] = True
    bad[34] = True
    assert torch.isfinite(out[~bad]).all() and torch.isfinite(logp[~bad]).all()
    torch.testing.assert_close(out[~bad].sum(-1), torch.ones(33, dtype=torch.float64), rtol=0, atol=1e-2)
    assert (logp[~bad] <= 0).all()
    assert torch.isnan(out[3]).all()  # NaN propagates, as in torch


def test_float64_works_for_gradcheck():
    # float64 always takes the general tier, whatever the setting
    x, *params = [t.detach().to(DEVICE).requires_grad_() for t in
                  [torch.randn(4, 3, dtype=torch.float64), *network(3, 6, 5)]]
    assert torch.autograd.gradcheck(lambda *a: fastffnn.ffnn(*a), (x, *params))


def test_huge_logits_stay_finite_and_bad_targets_are_refused():
    z = torch.tensor([[1e4, -1e4, 0.0]], device=DEVICE)
    w = torch.diag(z[0])  # ones(1, 3) @ w.T gives the logits z
    p = fastffnn.linear_softmax(torch.ones(1, 3, device=DEVICE), w, None)
    assert torch.isfinite(p).all() and torch.allclose(p.cpu(), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.isfinite(fastffnn.softmax_nll(z, torch.tensor([1], device=DEVICE))).all()
    with pytest.raises(IndexError, match="class index 3"):
        fastffnn.softmax_nll(z, torch.tensor([3], device=DEVICE))


@pytest.mark.parametrize("tier_name,mode,in_f,batch,expect_fused", [
    ("fused", "float32", 300, 33, True),
    ("general", "float32", 300, 33, False),
    ("auto", "float32", 300, 33, True),     # a short block: 32 x 300 x 100 FMAs
    ("auto", "float32", 2048, 33, False),   # a wide input makes every block long in exact FP32 ...
    ("auto", "tf32", 2048, 33, True),       # ... but not on the tensor cores
    ("auto", "float32", 300, 4097, False),  # large batches go to cuBLAS
])
def test_each_tier_runs_its_own_kernels(tier_name, mode, in_f, batch, expect_fused):
    previous = fastffnn.set_cuda_tier(tier_name)
    try:
        model = fastffnn.FastFFNN(in_f, 100, 5).to(DEVICE)
        x = torch.randn(batch, in_f, device=DEVICE)
        y = torch.randint(0, 5, (batch,), device=DEVICE)
        with precision(mode):
            names = launched_kernels(lambda: model.nll_loss(x, y).backward())
    finally:
        fastffnn.set_cuda_tier(previous)
    fused = [n for n in names if "fused_forward_kernel" in n or "fused_backward_kernel" in n]
    general = [n for n in names if "bias_act_kernel" in n or "rows_with_colsum_kernel" in n]
    if expect_fused:
        assert len(fused) == 2 and not general, names
    else:
        assert not fused and general, names


def test_tier_setting_is_checked():
    with pytest.raises(ValueError, match="tier must be one of"):
        fastffnn.set_cuda_tier("fast")
    previous = fastffnn.set_cuda_tier("general")
    try:
        assert fastffnn.cuda_tier() == "general"
    finally:
        fastffnn.set_cuda_tier(previous)


def test_same_input_same_bits(tier):
    torch.manual_seed(0)
    batch = rows(4097, 129)
    x = torch.randn(batch, 300, device=DEVICE)
    model = fastffnn.FastFFNN(300, 256, 10).to(DEVICE)
    y = torch.randint(0, 10, (batch,), device=DEVICE)
    results = []
    for _ in range(2):
        model.zero_grad()
        loss = model.nll_loss(x, y)
        loss.backward()
        results.append([loss.detach().clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_bias_gradients_of_a_long_batch_use_the_whole_batch(tier):
    # the column sums (bias gradients) over many blocks and chunks of rows
    batch = rows(20000, 1000)
    x = torch.randn(batch, 30, dtype=torch.float64)
    check(lambda *a: fastffnn.ffnn(*a), lambda *a: ref.ffnn(*a), [x, *network(30, 40, 7)], "float32", K=batch)


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: CUDA graphs")
def test_cuda_graph_capture_and_replay_of_a_training_step(tier):
    torch.manual_seed(0)
    model = fastffnn.FastFFNN(300, 100, 5).cuda()
    twin = fastffnn.FastFFNN(300, 100, 5).cuda()
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-3, capturable=True)
    static_x = torch.randn(64, 300, device="cuda")
    static_y = torch.randint(0, 5, (64,), device="cuda")

    def step(m, o):
        o.zero_grad(set_to_none=False)
        loss = m.nll_loss(static_x, static_y)
        loss.backward()
        o.step()
        return loss

    # warm up on a side stream, as CUDA graphs require
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step(model, opt)
            step(twin, opt_twin)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step(model, opt)
    for _ in range(5):
        static_x.copy_(torch.randn(64, 300, device="cuda"))
        static_y.copy_(torch.randint(0, 5, (64,), device="cuda"))
        graph.replay()
        eager_loss = step(twin, opt_twin)
        torch.testing.assert_close(static_loss, eager_loss)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: moves between the CPU and CUDA")
def test_module_and_checkpoints_move_between_devices():
    model = fastffnn.FastFFNN(7, 10, 5)
    x = torch.randn(4, 7)
    expected = model(x)
    assert_close(model.cuda()(x.cuda()).cpu(), expected, tolerance("float32", 10), "output on CUDA")
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    back = fastffnn.FastFFNN(7, 10, 5)
    back.load_state_dict(state)
    torch.testing.assert_close(back(x), expected)
    with pytest.raises(ValueError, match="V_weight is on cuda"):
        fastffnn.ffnn(x, model.V.weight, None, model.W.weight.cpu(), None)


# ------------------------------------------------------------ the network of any depth (mlp ops)
def layers(sizes, bias=True):
    out = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        out += [torch.randn(n_out, n_in, dtype=torch.float64) / n_in ** 0.5,
                torch.randn(n_out, dtype=torch.float64) * 0.5 if bias else None]
    return out


def ref_mlp(x, *params, activations, log=False, target=None, reduction="mean"):
    a = x
    for k, act in enumerate(activations):
        a = ref.ACTIVATIONS[act](torch.nn.functional.linear(a, params[2 * k], params[2 * k + 1]))
    logits = torch.nn.functional.linear(a, params[-2], params[-1])
    if target is not None:
        return ref.softmax_nll(logits, target, reduction)
    return torch.log_softmax(logits, -1) if log else torch.softmax(logits, -1)


DEEPEST = (9, 8, 7, 6, 5, 4, 3, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3)  # 16 layers


# Depth 1 (softmax regression), 2 (the fused tier's network, through the list op) and 3-4, across the
# fused tier's width limits (256 hidden, 64 classes) and its 32-row tiles; tanh/sigmoid, whose derivative
# has no kink, in every precision; ReLU in float64 (tests/test_mlp_ops.py covers it on the CPU).
@pytest.mark.parametrize("mode", ["float64", *MODES])
@pytest.mark.parametrize("sizes,acts,batch", [
    ((7, 5), (), 33), ((300, 100, 5), ("tanh",), rows(4097, 65)), ((300, 128, 128, 5), ("tanh", "sigmoid"), 33),
    ((20, 257, 33, 17, 65), ("sigmoid", "tanh", "tanh"), rows(1025, 97)), ((1, 1, 1), ("sigmoid",), 1),
    ((9, 6, 4), ("tanh",), 0),
    # the fused tier's bounds in a deep network: widths 256 and 1, 64 classes, and 16 layers (its most)
    ((40, 256, 1, 31, 64), ("tanh", "sigmoid", "tanh"), 33), ((9, 8, 7, 6, 5, 4, 3, 2, 3), ("sigmoid",) * 7, 35),
    (DEEPEST, ("tanh", "sigmoid") * 7 + ("tanh",), 33), (DEEPEST + (3,), ("tanh",) * 16, 33),  # 17: the general tier
])
def test_mlp(tier, mode, sizes, acts, batch):
    x = torch.randn(batch, sizes[0], dtype=torch.float64)
    params = layers(sizes, bias=batch != 1)
    K = max(*sizes, batch)
    depth = len(sizes) - 1
    for log in (False, True):
        check(lambda x, *p: fastffnn.ops.mlp(x, list(p[0::2]), list(p[1::2]), list(acts), log),
              lambda x, *p: ref_mlp(x, *p, activations=acts, log=log), [x, *params], mode, K=K, layers=depth)
    y = torch.randint(0, sizes[-1], (batch,))
    check(lambda x, *p: fastffnn.ops.mlp_nll(x, list(p[0:-1:2]), list(p[1:-1:2]), p[-1], list(acts)),
          lambda x, *p: ref_mlp(x, *p[:-1], activations=acts, target=p[-1]), [x, *params, y], mode, K=K,
          layers=depth)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_mlp_relu_and_probability_targets(tier, reduction):
    sizes, acts = (30, 40, 20, 7), ("relu", "relu")
    x = torch.randn(35, 30, dtype=torch.float64)
    y = torch.softmax(torch.randn(35, 7, dtype=torch.float64), -1)
    check(lambda x, *p: fastffnn.ops.mlp_nll(x, list(p[0:-1:2]), list(p[1:-1:2]), p[-1], list(acts), reduction),
          lambda x, *p: ref_mlp(x, *p[:-1], activations=acts, target=p[-1], reduction=reduction),
          [x, *layers(sizes), y], "float64", K=40)


@pytest.mark.parametrize("sizes,fused", [
    ((30, 40, 20, 7), True), ((30, 256, 256, 256, 64), True), ((30, 257, 20, 7), False), ((30, 40, 20, 65), False),
    ((9, 8, 7, 6, 5, 4, 3, 2, 3), True), (DEEPEST, True), (DEEPEST + (3,), False),
])
def test_a_deep_network_takes_the_fused_tier_where_it_fits(sizes, fused):
    # forward: one kernel for the whole network; backward: one kernel for every layer's row work
    previous = fastffnn.set_cuda_tier("fused")
    try:
        model = fastffnn.FastMLP(list(sizes)).to(DEVICE)
        x = torch.randn(40, sizes[0], device=DEVICE)
        y = torch.randint(0, sizes[-1], (40,), device=DEVICE)
        forward = launched_kernels(lambda: model(x))
        step = launched_kernels(lambda: model.nll_loss(x, y).backward())
    finally:
        fastffnn.set_cuda_tier(previous)
    def count(names, kernel):
        return sum(kernel in n for n in names)  # the profiler's names carry the template arguments

    if fused:
        assert len(forward) == 1 and count(forward, "fused_forward_kernel") == 1, forward
        assert count(step, "fused_forward_kernel") == 1 and count(step, "fused_backward_kernel") == 1, step
        assert not count(step, "bias_act") and not count(step, "rows_with_colsum"), step
    else:
        assert not count(forward, "fused_forward_kernel") and not count(step, "fused_backward_kernel"), (forward, step)


@pytest.mark.parametrize("frozen", ["first layer", "all but the last", "input only"])
def test_the_deep_fused_backward_forms_only_what_is_asked(tier, frozen):
    sizes, acts = (30, 40, 20, 16, 7), ("tanh", "relu", "sigmoid")
    x = torch.randn(33, 30, dtype=torch.float64)
    params = layers(sizes)
    y = torch.randint(0, 7, (33,))
    # positions in [x, w0, b0, w1, b1, w2, b2, w3, b3, y]: the kernel then stops at layer 1, at layer 3, or
    # forms every layer's dz but not the input's gradient
    constant = {"first layer": (0, 1, 2), "all but the last": (0, 1, 2, 3, 4, 5, 6), "input only": (0,)}[frozen]
    check(lambda x, *p: fastffnn.ops.mlp_nll(x, list(p[0:-1:2]), list(p[1:-1:2]), p[-1], list(acts), "sum"),
          lambda x, *p: ref_mlp(x, *p[:-1], activations=acts, target=p[-1], reduction="sum"),
          [x, *params, y], "float64" if tier == "general" else "float32", K=40, constant=constant)


# ---------------------------------------------------------------- the optimizers' one-launch update
OPT_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# odd sizes, an empty tensor, one past a block's first stride (256 threads x 4), a transposed one
OPT_SHAPES = [(7, 5), (7,), (3, 7), (3,), (0, 4), (1030,)]


def _opt_params(dtype, count=None):
    g = torch.Generator().manual_seed(0)
    shapes = OPT_SHAPES if count is None else [(5 + k % 3,) for k in range(count)]
    values = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return values, [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,config", [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True)),
])
@pytest.mark.parametrize("count", [None, 30], ids=["shapes", "30-tensors"])
def test_optimizer_step_matches_torch(dtype, kind, config, count):
    """fastffnn.optim's step() on the device against torch.optim's on CPU copies, three steps.

    For float16 and bfloat16 the reference is torch's fused CPU update, which like this one computes in
    float32 and stores the state in the parameters' dtype (torch's plain update in float16 rounds eps=1e-8 to
    zero and divides by it); for float32 and float64 it is the plain update in float64.
    30 tensors take two launches (24 a launch); a transposed parameter goes through a copy."""
    values, grads = _opt_params(dtype, count)
    ours = [torch.nn.Parameter(v.to(DEVICE, dtype)) for v in values]
    if count is None:
        ours[2] = torch.nn.Parameter(values[2].t().contiguous().to(DEVICE, dtype).t())  # strided, (3, 7) as a view
    ref_dtype = torch.float64 if dtype == torch.float32 else dtype
    ref = [torch.nn.Parameter(p.detach().to("cpu", ref_dtype).clone(memory_format=torch.contiguous_format))
           for p in ours]
    fast_cls, torch_cls = {"adam": (fastffnn.optim.Adam, torch.optim.Adam),
                           "sgd": (fastffnn.optim.SGD, torch.optim.SGD)}[kind]
    reduced = dtype in (torch.float16, torch.bfloat16)
    opt, ref_opt = fast_cls(ours, **config), torch_cls(ref, **config, **({"fused": True} if reduced else {}))
    for step in range(3):
        for p, r, gr in zip(ours, ref, grads):
            scaled = gr * (1 + step)
            p.grad = scaled.to(DEVICE, dtype)
            r.grad = p.grad.detach().to("cpu", ref_dtype)  # the same rounded gradient
        opt.step()
        ref_opt.step()
    tol = OPT_TOL[dtype]
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.detach().double().cpu(), r.detach().double(), rtol=tol, atol=tol)
    for p, r in zip(ours, ref):
        for key, value in ref_opt.state[r].items():
            if key != "step":
                torch.testing.assert_close(opt.state[p][key].double().cpu(), value.double(), rtol=tol, atol=tol)


def test_optimizer_step_is_one_launch_per_dtype():
    params = [torch.nn.Parameter(torch.randn(4, 3, device=DEVICE)) for _ in range(5)]
    params.append(torch.nn.Parameter(torch.randn(6, device=DEVICE, dtype=torch.float64)))
    for p in params:
        p.grad = torch.randn_like(p)
    adam = fastffnn.optim.Adam(params, lr=0.01)
    names = launched_kernels(adam.step)
    assert len(names) == 2 and all("adam_kernel" in n for n in names), names  # float32's five, float64's one
    sgd = fastffnn.optim.SGD(params, lr=0.1, momentum=0.9)
    names = launched_kernels(sgd.step)
    assert len(names) == 2 and all("sgd_kernel" in n for n in names), names


def test_train_step_and_fit_on_the_device_match_stock_pytorch():
    """On CUDA train_step is one native call (the fused ops and the one-launch update), and fit loops over it:
    against stock modules, autograd and torch.optim.Adam in float64 on the CPU."""
    torch.manual_seed(0)
    model = fastffnn.FastMLP([6, 9, 7, 3], activation=["tanh", "relu"], dtype=torch.float64).to(DEVICE)
    stock = torch.nn.Sequential(*copy.deepcopy(list(model))).cpu()
    X, y = torch.randn(10, 6, dtype=torch.float64), torch.randint(0, 3, (10,))
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    stock_opt = torch.optim.Adam(stock.parameters(), lr=0.01)

    def stock_step(rows):
        stock_opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(stock(X[rows].reshape(-1, 6))), y[rows].reshape(-1))
        loss.backward()
        stock_opt.step()
        return loss.detach()

    for rows in (slice(0, 4), slice(4, 5), 5):  # a batch, a batch of one, one 1-D example
        loss = opt.train_step(model, X[rows].to(DEVICE), y[rows].to(DEVICE))
        torch.testing.assert_close(loss.cpu(), stock_step(rows), rtol=1e-10, atol=1e-12)
    means = model.fit(X.to(DEVICE), y.to(DEVICE), opt, batch_size=3, generator=torch.Generator().manual_seed(1))
    order = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    stock_losses = [stock_step(batch) * len(batch) for batch in order.split(3)]
    assert means == pytest.approx([float(sum(stock_losses)) / 10], rel=1e-10)
    for p, r in zip(model.parameters(), stock.parameters()):
        torch.testing.assert_close(p.detach().cpu(), r.detach(), rtol=1e-10, atol=1e-12)


STEP_CONFIGS = [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("adam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("sgd", dict(lr=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.3)),
]


@pytest.mark.parametrize("kind,config", STEP_CONFIGS)
@pytest.mark.parametrize("model_kind,bias,target_kind,reduction,lead", [
    ("mlp", True, "index", "mean", (5,)),
    ("mlp", False, "probs", "sum", (2, 3)),  # no biases, probability rows, a 3-D input
    ("ffnn", True, "index", "sum", ()),     # one 1-D example
    ("ffnn", False, "probs", "mean", (4,)),
])
def test_the_one_call_train_step_on_the_device_matches_stock_pytorch(kind, config, model_kind, bias, target_kind,
                                                                     reduction, lead):
    """csrc/cuda/train.cpp: forward, loss, backward and the update in one native call, against stock modules,
    autograd and torch.optim in float64 on the CPU, over three steps (the optimizers' state carried over)."""
    torch.manual_seed(1)
    if model_kind == "mlp":
        model = fastffnn.FastMLP([6, 9, 7, 3], activation=["tanh", "sigmoid"], bias=bias, dtype=torch.float64)
        stock = torch.nn.Sequential(*copy.deepcopy(list(model)))
    else:
        model = fastffnn.FastFFNN(6, 9, 3, activation="relu", bias=bias).double()
        stock = torch.nn.Sequential(copy.deepcopy(model.V), torch.nn.ReLU(), copy.deepcopy(model.W),
                                    torch.nn.Softmax(dim=-1))
    model = model.to(DEVICE)
    fast_cls = fastffnn.optim.Adam if kind == "adam" else fastffnn.optim.SGD
    stock_cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
    opt, stock_opt = fast_cls(model.parameters(), **config), stock_cls(stock.parameters(), **config)
    for _ in range(3):
        x = torch.randn(*lead, 6, dtype=torch.float64)
        if target_kind == "index":
            y = torch.randint(0, 3, lead)
            stock_loss = torch.nn.functional.nll_loss(torch.log(stock(x)).reshape(-1, 3), y.reshape(-1),
                                                      reduction=reduction)
        else:
            y = torch.softmax(torch.randn(*lead, 3, dtype=torch.float64), -1)
            per_row = -(y * torch.log(stock(x))).sum(-1)
            stock_loss = per_row.mean() if reduction == "mean" else per_row.sum()
        stock_opt.zero_grad()
        stock_loss.backward()
        stock_opt.step()
        loss = opt.train_step(model, x.to(DEVICE), y.to(DEVICE), reduction)
        torch.testing.assert_close(loss.cpu(), stock_loss.detach(), rtol=1e-10, atol=1e-12)
    for p, r in zip(model.parameters(), stock.parameters(), strict=True):
        assert p.grad is None  # train_step leaves .grad alone
        torch.testing.assert_close(p.detach().cpu(), r.detach(), rtol=1e-10, atol=1e-12)
    for p, r in zip(model.parameters(), stock.parameters()):
        for key, value in stock_opt.state[r].items():
            torch.testing.assert_close(opt.state[p][key].double().cpu(), value.double(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_train_step_on_the_device_is_one_native_call(kind):
    """No autograd graph and one update launch: the profiler sees the step op and no backward node, and the
    launches are the fused forward, the fused backward and one optimizer kernel (plus cuBLAS on a GPU)."""
    torch.manual_seed(0)
    model = fastffnn.FastMLP([6, 16, 3], device=DEVICE)
    opt = (fastffnn.optim.Adam if kind == "adam" else fastffnn.optim.SGD)(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 6, device=DEVICE), torch.randint(0, 3, (8,), device=DEVICE)
    opt.train_step(model, x, y)  # the optimizer's state, created outside the profile
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.train_step(model, x, y)
    names = [e.name for e in prof.events()]
    step_op = "fastffnn::mlp_nll_adam_step_" if kind == "adam" else "fastffnn::mlp_nll_sgd_step_"
    assert step_op in names, names
    assert not [n for n in names if "Backward" in n or "autograd::engine" in n], names
    previous = fastffnn.set_cuda_tier("fused")
    try:
        launches = launched_kernels(lambda: opt.train_step(model, x, y))
    finally:
        fastffnn.set_cuda_tier(previous)
    update = "adam_kernel" if kind == "adam" else "sgd_kernel"
    assert sum(update in n for n in launches) == 1, launches
    assert sum("fused" in n for n in launches) == 2, launches  # the forward's kernel and the backward's


FIT_CONFIGS = [
    ("adam", dict(lr=0.01)),
    ("adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.1)),
]


@pytest.mark.parametrize("kind,config", FIT_CONFIGS)
@pytest.mark.parametrize("batch_size,bias,target_kind", [(1, True, "index"), (3, True, "probs"), (4, False, "index")])
def test_fit_on_the_device_is_one_native_call_and_the_loop_of_train_step(kind, config, batch_size, bias, target_kind):
    """csrc/cuda/train_cuda.cpp's fit ops: each epoch one call of the fit op (no train_step op), with the
    parameters, the optimizer state and the epoch losses of the Python loop of train_step over the same order."""
    torch.manual_seed(3)
    model = fastffnn.FastMLP([5, 8, 6, 3], activation=["tanh", "relu"], bias=bias, dtype=torch.float64).to(DEVICE)
    twin = copy.deepcopy(model)
    cls = fastffnn.optim.Adam if kind == "adam" else fastffnn.optim.SGD
    opt, twin_opt = cls(model.parameters(), **config), cls(twin.parameters(), **config)
    X = torch.randn(10, 5, dtype=torch.float64, device=DEVICE)
    y = (torch.randint(0, 3, (10,)) if target_kind == "index"
         else torch.softmax(torch.randn(10, 3, dtype=torch.float64), -1)).to(DEVICE)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        means = model.fit(X, y, opt, epochs=2, batch_size=batch_size, generator=torch.Generator().manual_seed(5))
    names = [e.name for e in prof.events()]
    assert names.count(f"fastffnn::mlp_nll_{kind}_fit_") == 3, names  # the checks' call, then one an epoch
    assert not [n for n in names if "_step_" in n], names
    generator, expected = torch.Generator().manual_seed(5), []
    for _ in range(2):
        total = 0.0
        for batch in torch.randperm(10, generator=generator).split(batch_size):
            x, t = (X[batch[0]], y[batch[0]]) if batch_size == 1 else (X[batch], y[batch])
            total += float(twin_opt.train_step(twin, x, t)) * len(batch)
        expected.append(total / 10)
    assert means == pytest.approx(expected, rel=1e-12)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
        for key, value in twin_opt.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-12, atol=1e-14)


ROW_FIT_CASES = [
    # (optimizer, config, sizes, activations, bias, dtype, target)
    ("adam", dict(lr=0.01), [5, 8, 6, 3], ["tanh", "relu"], True, torch.float64, "index"),
    ("adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1), [7, 33, 3], ["sigmoid"], False, torch.float32, "probs"),
    ("adam", dict(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True, maximize=True), [6, 40, 9, 5, 4],
     ["relu", "tanh", "sigmoid"], True, torch.float64, "index"),
    ("adam", dict(lr=0.01), [3, 530, 2], ["tanh"], True, torch.float32, "index"),  # wider than the block's 512
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), [5, 8, 3], ["tanh"], True, torch.float64,
     "index"),
    ("sgd", dict(lr=0.05, momentum=0.5, dampening=0.3), [4, 36, 5], ["relu"], False, torch.float32, "probs"),
    ("sgd", dict(lr=0.1), [5, 8, 3], ["sigmoid"], True, torch.float64, "probs"),
]


@pytest.mark.parametrize("kind,config,sizes,acts,bias,dtype,target_kind", ROW_FIT_CASES,
                         ids=["adam-f64", "adam-amsgrad-f32-probs", "adam-decoupled-deep", "adam-wide",
                              "sgd-nesterov", "sgd-dampening-f32-probs", "sgd-plain-probs"])
def test_fit_at_batch_one_is_one_block_launch_and_the_loop_of_train_step(kind, config, sizes, acts, bias, dtype,
                                                                        target_kind):
    """row_fit.cu: a fit call at batch 1 is one launch of the one-block epoch, whose parameters, optimizer state
    (step counts included) and losses are those of the Python loop of train_step (the per-step kernels), the same
    bits under every thread schedule of the emulator."""
    torch.manual_seed(6)
    model = fastffnn.FastMLP(sizes, activation=acts, bias=bias, dtype=dtype).to(DEVICE)
    cls = fastffnn.optim.Adam if kind == "adam" else fastffnn.optim.SGD
    n = 9
    X = torch.randn(n, sizes[0], dtype=dtype).to(DEVICE)
    y = (torch.randint(0, sizes[-1], (n,)) if target_kind == "index"
         else torch.softmax(torch.randn(n, sizes[-1], dtype=dtype), -1)).to(DEVICE)
    twin = copy.deepcopy(model)
    twin_opt = cls(twin.parameters(), **config)
    expected = []
    generator = torch.Generator().manual_seed(7)
    for _ in range(2):
        total = 0.0
        for i in torch.randperm(n, generator=generator):
            total += float(twin_opt.train_step(twin, X[i], y[i]))
        expected.append(total / n)
    runs = []
    for schedule in ((0, 1, 2) if EMULATED else (None,)):
        set_schedule(schedule)
        ours = copy.deepcopy(model)
        opt = cls(ours.parameters(), **config)
        with poisoned_allocations():
            launches = launched_kernels(lambda: runs.append(
                ours.fit(X, y, opt, epochs=2, batch_size=1, generator=torch.Generator().manual_seed(7))))
        assert [k for k in launches if "row_fit" in k] == ["row_fit_kernel"] * 2, launches  # one an epoch
        assert not [k for k in launches if "adam_kernel" in k or "sgd_kernel" in k or "fused" in k], launches
        rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (2e-5, 2e-6)
        for p, q in zip(ours.parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=rtol, atol=atol)
            assert opt.state[p].keys() == twin_opt.state[q].keys()
            for key, value in twin_opt.state[q].items():
                torch.testing.assert_close(opt.state[p][key], value, rtol=rtol, atol=atol)
        assert runs[-1] == pytest.approx(expected, rel=rtol)
        runs[-1] = [torch.tensor(runs[-1])] + [p.detach().clone() for p in ours.parameters()]
    set_schedule(0 if EMULATED else None)
    assert_same_bits(runs, "the one-block epoch")


@pytest.mark.parametrize("kind,config", [("adam", dict(lr=0.01, amsgrad=True)),
                                         ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.2))], ids=["adam", "sgd"])
def test_a_long_fit_at_batch_one_is_a_launch_per_1024_steps_and_the_same_as_calls_of_1024(kind, config):
    """row_fit.cu cuts a call of more than 1,024 steps into launches of 1,024, each carrying on where the last
    ended (rows, losses, Adam's step count, SGD's buffer no longer fresh): an epoch of 1,030 examples in one call
    gives the same bits as the same epoch in two calls (callback_every=1024), each one launch."""
    torch.manual_seed(10)
    model = fastffnn.FastMLP([3, 4, 2], dtype=torch.float64).to(DEVICE)
    cls = fastffnn.optim.Adam if kind == "adam" else fastffnn.optim.SGD
    X = torch.randn(1030, 3, dtype=torch.float64).to(DEVICE)
    y = torch.randint(0, 2, (1030,)).to(DEVICE)
    results, means = [], []
    for every in (None, 1024):
        ours = copy.deepcopy(model)
        opt = cls(ours.parameters(), **config)
        calls = []
        launches = launched_kernels(lambda: calls.append(ours.fit(
            X, y, opt, batch_size=1, generator=torch.Generator().manual_seed(11),
            callback=None if every is None else (lambda step, loss: calls.append(step)), callback_every=every)))
        assert [k for k in launches if "row_fit" in k] == ["row_fit_kernel"] * 2, launches
        assert calls[:-1] == ([] if every is None else [1024]), calls  # two calls when cut by the callback
        state = [t for p in ours.parameters() for t in opt.state[p].values()]
        if kind == "adam":
            assert all(float(opt.state[p]["step"]) == 1030 for p in ours.parameters())
        means.append(calls[-1])
        results.append([*[p.detach().clone() for p in ours.parameters()],
                        *[t.clone() for t in state if isinstance(t, torch.Tensor)]])
    assert means[0] == pytest.approx(means[1], rel=1e-12)  # (the epoch's mean sums two calls' losses in another order)
    assert not torch.equal(results[0][0], model[0].weight)  # it trained
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_fit_at_batch_one_takes_the_per_step_route_where_the_one_block_epoch_does_not_apply():
    """bfloat16 (the one-block epoch takes float32 and float64): the per-step kernels, one step at a time."""
    torch.manual_seed(8)
    model = fastffnn.FastMLP([5, 8, 3], dtype=torch.bfloat16).to(DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    X, y = torch.randn(4, 5, dtype=torch.bfloat16).to(DEVICE), torch.randint(0, 3, (4,)).to(DEVICE)
    launches = launched_kernels(lambda: model.fit(X, y, opt, batch_size=1))
    assert "row_fit_kernel" not in launches, launches
    assert sum("adam_kernel" in k for k in launches) == 4, launches


def test_fit_on_the_device_reads_the_device_only_before_its_first_step():
    """The labels are checked once a call (IndicesChecked): four steps or twelve, the same reads back."""
    torch.manual_seed(4)
    model = fastffnn.FastMLP([5, 8, 3], device=DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    reads = []
    for n in (4, 12):
        X, y = torch.randn(n, 5, device=DEVICE), torch.randint(0, 3, (n,), device=DEVICE)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model.fit(X, y, opt, batch_size=1)
        names = [e.name for e in prof.events()]
        assert "fastffnn::mlp_nll_adam_fit_" in names, names
        reads.append(names.count("aten::_local_scalar_dense"))
    assert reads[0] == reads[1], reads


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("bad", ["label", "order"])
def test_the_fit_ops_on_the_device_check_labels_and_order_before_any_step(kind, bad):
    torch.manual_seed(5)
    model = fastffnn.FastMLP([5, 8, 3], dtype=torch.float64).to(DEVICE)
    params = [p.detach() for p in model.parameters()]
    before = [p.clone() for p in params]
    X, y = torch.randn(6, 5, dtype=torch.float64, device=DEVICE), torch.randint(0, 3, (6,))
    order = torch.arange(6)
    if bad == "label":
        y[4] = 3
    else:
        order[5] = 6
    y = y.to(DEVICE)
    if kind == "adam":
        state = [[torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params], [],
                 [torch.tensor(0.0) for _ in params]]
        call = lambda: torch.ops.fastffnn.mlp_nll_adam_fit_(  # noqa: E731
            X, y, order, 2, params, True, *state, ["tanh"], 0.01, 0.9, 0.999, 1e-8, 0.0, False, False, False)
    else:
        call = lambda: torch.ops.fastffnn.mlp_nll_sgd_fit_(  # noqa: E731
            X, y, order, 2, params, True, [], [], ["tanh"], 0.1, 0.0, 0.0, 0.0, False, False)
    with pytest.raises(IndexError, match="class index 3" if bad == "label" else "order must index the 6 rows"):
        call()
    for p, b in zip(params, before):
        assert torch.equal(p, b)


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: CUDA autocast")
def test_train_step_under_autocast_takes_the_autograd_route():
    model = fastffnn.FastMLP([6, 16, 3], device=DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(8, 6, device=DEVICE), torch.randint(0, 3, (8,), device=DEVICE)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=True):
        assert torch.is_autocast_enabled("cuda")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.train_step(model, x, y)
    assert "fastffnn::mlp_nll_adam_step_" not in [e.name for e in prof.events()]


@pytest.mark.parametrize("params", [dict(solver="adam", alpha=0.5, batch_size=7),
                                    dict(solver="adam", alpha=0.5, batch_size=1),  # the one-block epoch
                                    dict(solver="sgd", learning_rate_init=0.05, batch_size=1, alpha=0.1)])
def test_the_sklearn_estimator_on_the_device_trains_scikit_learns_model(params):
    """fastffnn.sklearn.MLPClassifier on the device: its epochs are the device's fit ops, with scikit-learn's
    penalty (alpha) and eps (eps_before_correction): scikit-learn's own model, float64."""
    pytest.importorskip("sklearn")
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SkMLP

    from fastffnn.sklearn import MLPClassifier
    rng = np.random.RandomState(0)
    X, y = rng.randn(30, 6), rng.randint(0, 3, 30)
    params.update(hidden_layer_sizes=(5,), activation="tanh", random_state=2, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = SkMLP(**params).fit(X, y)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            ours = MLPClassifier(**params, device=DEVICE, dtype=torch.float64).fit(X, y)
    fit_op = f"fastffnn::mlp_nll_{params['solver']}_fit_"
    assert [e.name for e in prof.events()].count(fit_op) == 2  # an epoch each, max_iter=2
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_steps_and_epochs_refuse_a_cuda_graph_capture_before_any_work(kind):
    """Adam's step counters live on the CPU, and SGD's first step sets its new momentum buffers to the gradients:
    a replay would repeat either step's constants, so train_step and step() refuse a capture, and fit (both
    routes, which reads the device) does too, before they launch anything or read the device: the parameters,
    the optimizer's state and the step counts stay as they were (on the emulator: no kernel launched and no
    value read back)."""
    torch.manual_seed(12)
    model = fastffnn.FastMLP([5, 8, 3], device=DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01) if kind == "adam" else \
        fastffnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    X, y = torch.randn(6, 5, device=DEVICE), torch.randint(0, 3, (6,), device=DEVICE)
    if kind == "adam":
        opt.train_step(model, X[:2], y[:2])  # the state exists before the captures

    def snapshot():
        return [p.detach().clone() for p in model.parameters()] + \
            [t.clone() for p in model.parameters() for t in opt.state[p].values() if isinstance(t, torch.Tensor)]

    before = snapshot()

    def step_with_grads():
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()

    calls = {"train_step": lambda: opt.train_step(model, X[:2], y[:2]),
             "fit at batch 1": lambda: model.fit(X, y, opt, batch_size=1),
             "fit at batch 3": lambda: model.fit(X, y, opt, batch_size=3),
             "step": step_with_grads}
    for name, call in calls.items():
        # each with its reason
        why = ("an epoch checks its inputs on the device" if name.startswith("fit") else
               "its step counters live on the CPU" if kind == "adam" else "the first step of its momentum buffers")

        def refused():
            with pytest.raises(RuntimeError, match=f"cannot be captured in a CUDA graph: .*{why}"):
                call()
        with capturing():
            if EMULATED:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    launches = launched_kernels(refused)
                assert launches == [], (name, launches)
                reads = [e for e in prof.events() if e.name == "aten::_local_scalar_dense"]
                # (fit's Python reads the labels' range before its native call; on a GPU it refuses first)
                assert name.startswith("fit") or not reads, name
            else:
                refused()
        for a, b in zip(before, snapshot(), strict=True):
            assert torch.equal(a, b), name
        model.zero_grad(set_to_none=True)


def _adam_twins(counter_dtype, amsgrad=True):
    """A FastMLP with Adam(capturable=True) and its copy with Adam() (CPU counters), both a step in, their counters
    then set to 5 and 7 (alternately, in counter_dtype) so that the bias corrections differ from the start's."""
    torch.manual_seed(31)
    model = fastffnn.FastMLP([6, 9, 4], device=DEVICE)
    twin = copy.deepcopy(model)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.02, amsgrad=amsgrad, capturable=True)
    twin_opt = fastffnn.optim.Adam(twin.parameters(), lr=0.02, amsgrad=amsgrad)
    X, y = torch.randn(7, 6, device=DEVICE), torch.randint(0, 4, (7,), device=DEVICE)
    with device_steps():
        opt.train_step(model, X[:2], y[:2])
    twin_opt.train_step(twin, X[:2], y[:2])
    for o in (opt, twin_opt):
        for i, p in enumerate(o.param_groups[0]["params"]):
            device = o.state[p]["step"].device
            o.state[p]["step"] = torch.full((), 7.0 if i % 2 else 5.0, dtype=counter_dtype, device=device)
    return model, opt, twin, twin_opt, X, y


def _assert_same_training(model, opt, twin, twin_opt):
    """The same parameters, moments and step counts: bit for bit on the emulator (its host and its device form
    the bias corrections with the same double arithmetic), to float32 rounding on a GPU, whose pow may differ in
    the last bit."""
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        mine, theirs = opt.state[p], twin_opt.state[q]
        assert mine.keys() == theirs.keys()
        assert mine["step"].device == (torch.device("cpu") if EMULATED else p.device)
        assert theirs["step"].device.type == "cpu"
        for key in mine:
            a, b = mine[key].cpu(), theirs[key].cpu()
            if EMULATED:
                assert torch.equal(a, b), key
            else:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        if EMULATED:
            assert torch.equal(p.detach(), q.detach())
        else:
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("route", ["train_step", "step", "fit at batch 3", "fit at batch 1"])
@pytest.mark.parametrize("counter_dtype", [torch.float32, torch.float64])
def test_capturable_adam_keeps_its_counters_on_the_device_and_takes_the_same_steps(route, counter_dtype, schedule):
    """Adam(capturable=True): each step counter on its parameter's device, advanced there by one launch more
    (advance_steps_kernel, before the update's), the bias corrections formed from it in the update's kernel. Three
    steps (or an epoch of fit, whose counters come to the host for the call and go back) give what the CPU
    counters give, from uneven counts in either dtype torch keeps them in, under each thread schedule (the
    block's shared bias corrections are written by thread 0 before the barrier)."""
    model, opt, twin, twin_opt, X, y = _adam_twins(counter_dtype)
    set_schedule(schedule)

    def run(m, o):
        if route.startswith("fit"):
            m.fit(X, y, o, batch_size=int(route[-1]), shuffle=False)
            return
        for i in range(3):
            xb, yb = X[2 * i:2 * i + 2], y[2 * i:2 * i + 2]
            if route == "train_step":
                o.train_step(m, xb, yb)
            else:
                m.zero_grad(set_to_none=True)
                m.nll_loss(xb, yb).backward()
                o.step()

    try:
        with device_steps():
            launches = launched_kernels(lambda: run(model, opt))
    finally:
        set_schedule(0 if EMULATED else None)
    run(twin, twin_opt)
    if not route.startswith("fit"):
        assert launches.count("advance_steps_kernel") == 3, launches
    assert opt.state[next(model.parameters())]["step"].dtype == counter_dtype
    _assert_same_training(model, opt, twin, twin_opt)


def test_capturable_adam_steps_run_under_a_capture_and_fit_still_refuses():
    """With device counters nothing reads a counter on the host, so train_step and step() run under a capture
    (on the emulator: its capture setting, where the kernels still run and must take the CPU counters' steps;
    tests below replay real graphs on a GPU); fit reads the device and still refuses, before any work."""
    model, opt, twin, twin_opt, X, y = _adam_twins(torch.float32, amsgrad=False)
    before = [p.detach().clone() for p in model.parameters()]
    with device_steps(), capturing():
        opt.train_step(model, X[:2], y[:2])
        # (nothing may read the device under a real capture: there the parameters stay as they were)
        before = [p.detach().clone() for p in model.parameters()] if EMULATED else before
        with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph: an epoch checks its inputs"):
            model.fit(X, y, opt, batch_size=3)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    if EMULATED:  # the capture above ran its kernels: they must have taken the CPU counters' step
        twin_opt.train_step(twin, X[:2], y[:2])
        _assert_same_training(model, opt, twin, twin_opt)


def _sgd_twins(**hyper):
    """A FastMLP with fastffnn's SGD and an identical copy with its own, and 16 rows of data."""
    torch.manual_seed(32)
    model = fastffnn.FastMLP([6, 9, 4], device=DEVICE)
    twin = copy.deepcopy(model)
    hyper = dict(lr=0.05, **hyper)
    opt, twin_opt = (fastffnn.optim.SGD(m.parameters(), **hyper) for m in (model, twin))
    return model, opt, twin, twin_opt, torch.randn(16, 6, device=DEVICE), torch.randint(0, 4, (16,), device=DEVICE)


def _sgd_step(route, m, o, xb, yb):
    if route == "train_step":
        return o.train_step(m, xb, yb)
    m.zero_grad(set_to_none=True)
    m.nll_loss(xb, yb).backward()
    o.step()


def _assert_same_sgd_training(model, opt, twin, twin_opt):
    """The same parameters and momentum buffers: bit for bit on the emulator, to float32 rounding on a GPU."""
    same = torch.equal if EMULATED else (lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-7))
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert opt.state[p].keys() == twin_opt.state[q].keys()
        assert all(same(opt.state[p][k], twin_opt.state[q][k]) for k in opt.state[p])
        assert same(p.detach(), q.detach())


@pytest.mark.parametrize("route", ["train_step", "step"])
def test_sgd_steps_after_the_first_run_under_a_capture(route):
    """Once its momentum buffers exist nothing of an SGD step is read or decided on the host, so train_step and
    step() run under a capture (on the emulator: its capture setting, where the kernels still run and must take
    the eager steps; the test below replays real graphs on a GPU)."""
    model, opt, twin, twin_opt, X, y = _sgd_twins(momentum=0.9, nesterov=True, weight_decay=0.01)
    _sgd_step(route, model, opt, X[:2], y[:2])
    _sgd_step(route, twin, twin_opt, X[:2], y[:2])
    before = [p.detach().clone() for p in model.parameters()]
    with capturing():
        for i in (1, 2):
            _sgd_step(route, model, opt, X[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
    if not EMULATED:  # a real capture runs nothing
        assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
        return
    for i in (1, 2):
        _sgd_step(route, twin, twin_opt, X[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
    _assert_same_sgd_training(model, opt, twin, twin_opt)


def _graph_of_one_step(route, model, opt, static_x, static_y):
    """A torch.cuda.CUDAGraph of one step on static_x, static_y: train_step, or a backward whose gradients are
    copied into .grad, then step()."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def one_step():
        if route == "train_step":
            opt.train_step(model, static_x, static_y)
        else:
            for p, g in zip(model.parameters(), torch.autograd.grad(model.nll_loss(static_x, static_y),
                                                                    list(model.parameters()))):
                p.grad.copy_(g)
            opt.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        with torch.cuda.graph(graph):
            one_step()
    torch.cuda.current_stream().wait_stream(side)
    return graph


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: CUDA graphs")
@pytest.mark.parametrize("route", ["train_step", "step"])
def test_sgd_replays_a_captured_step_after_its_first(route):
    """A CUDA graph of SGD's second step (train_step, or step() after a captured backward's gradients are in
    place), replayed 4 times on new batches copied into its inputs: the 4 steps the eager twin takes, its
    momentum buffers carried from replay to replay."""
    model, opt, twin, twin_opt, X, y = _sgd_twins(momentum=0.8, dampening=0.1)
    _sgd_step("train_step", model, opt, X[:2], y[:2])
    _sgd_step("train_step", twin, twin_opt, X[:2], y[:2])
    static_x, static_y = X[:2].clone(), y[:2].clone()
    graph = _graph_of_one_step(route, model, opt, static_x, static_y)
    for i in range(1, 5):
        static_x.copy_(X[2 * i:2 * i + 2])
        static_y.copy_(y[2 * i:2 * i + 2])
        graph.replay()
        _eager(lambda: _sgd_step(route, twin, twin_opt, X[2 * i:2 * i + 2], y[2 * i:2 * i + 2]))
    torch.cuda.synchronize()
    _assert_same_sgd_training(model, opt, twin, twin_opt)


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: torch.cuda.is_current_stream_capturing")
@pytest.mark.parametrize("route", ["train_step", "step"])
def test_sgd_refuses_a_tensor_lr_under_a_capture(route):
    """SGD reads a Tensor lr on the host at each step: a graph would hold the value of its capture, so a capture
    with one is refused (train_step's automatic graphs read it into their key instead)."""
    model, opt, twin, twin_opt, X, y = _sgd_twins(momentum=0.9)
    opt.param_groups[0]["lr"] = torch.tensor(0.05)
    _sgd_step("train_step", model, opt, X[:2], y[:2])  # the buffers exist
    saved = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="a Tensor lr is read on the host"):
        _graph_of_one_step(route, model, opt, X[2:4].clone(), y[2:4].clone())
    torch.cuda.synchronize()
    assert all(torch.equal(a, p) for a, p in zip(saved, model.parameters()))


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: CUDA graphs")
@pytest.mark.parametrize("route", ["train_step", "step"])
def test_capturable_adam_replays_a_captured_step_with_advancing_bias_corrections(route):
    """A CUDA graph of one step (train_step, or step() after a captured backward's gradients are in place),
    replayed 4 times on new batches copied into its inputs: the 4 steps the CPU counters take eagerly, each with
    its own bias corrections (a replay of frozen ones would drift from them)."""
    model, opt, twin, twin_opt, X, y = _adam_twins(torch.float32, amsgrad=False)
    X, y = torch.randn(8, 6, device=DEVICE), torch.randint(0, 4, (8,), device=DEVICE)
    static_x, static_y = X[:2].clone(), y[:2].clone()
    saved = [p.detach().clone() for p in model.parameters()]
    graph = _graph_of_one_step(route, model, opt, static_x, static_y)
    # the capture ran nothing: the parameters are those before it
    for a, p in zip(saved, model.parameters()):
        assert torch.equal(a, p)
    for i in range(4):
        static_x.copy_(X[2 * i:2 * i + 2])
        static_y.copy_(y[2 * i:2 * i + 2])
        graph.replay()
        _eager(lambda: twin_opt.train_step(twin, X[2 * i:2 * i + 2], y[2 * i:2 * i + 2]))
    torch.cuda.synchronize()
    _assert_same_training(model, opt, twin, twin_opt)


class _EmulatedGraphs:
    """CUDA graphs on the emulator, for fastffnn._graphs: a capture runs nothing and holds the step; a replay runs
    it as a GPU replays a graph, under a capture (nothing read back) and with its step counters as device memory.
    (Unlike a GPU's, its replay runs the step's host code again: the device counters' kernels are what make a real
    replay right, and the tests above check them.)"""

    def __init__(self, loss_dtype):
        self.loss_dtype, self.captures, self.replays = loss_dtype, 0, 0

    @staticmethod
    def serves(t):
        return t.device.type == "cpu"

    def capture(self, fn, device):
        self.captures += 1
        out = torch.empty((), dtype=self.loss_dtype)
        return (fn, out), out

    def replay(self, graph):
        self.replays += 1
        fn, out = graph
        with device_steps(), capturing():
            out.copy_(fn())


class _CountedGraphs:
    """torch.cuda.CUDAGraph (fastffnn._graphs' own backend), counting captures and replays."""

    def __init__(self, loss_dtype):
        self.captures, self.replays = 0, 0

    serves = staticmethod(graphs_module._TorchGraphs.serves)

    def capture(self, fn, device):
        self.captures += 1
        return graphs_module._TorchGraphs.capture(fn, device)

    def replay(self, handle):
        self.replays += 1
        graphs_module._TorchGraphs.replay(handle)


@pytest.fixture
def graphs(monkeypatch):
    """fastffnn._graphs on, with a backend that counts (on the emulator, _EmulatedGraphs)."""
    backend = (_EmulatedGraphs if EMULATED else _CountedGraphs)(torch.float32)
    monkeypatch.setattr(graphs_module, "backend", backend)
    monkeypatch.setattr(graphs_module, "ENABLED", True)
    return backend


def _eager(fn):
    """fn() with fastffnn's automatic CUDA graphs off."""
    old = graphs_module.ENABLED
    graphs_module.ENABLED = False
    try:
        return fn()
    finally:
        graphs_module.ENABLED = old


def _same_loss(a, b):
    if EMULATED:
        assert torch.equal(a, b)
    else:
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("sizes", [[6, 9, 4], [6, 300, 4]], ids=["fused tier", "general tier (cuBLAS)"])
@pytest.mark.parametrize("capturable", [False, True])
def test_train_step_replays_a_cuda_graph_of_a_repeated_step(graphs, capturable, sizes):
    """train_step on CUDA captures the step its optimizer saw twice before (fastffnn/_graphs.py) and replays it
    while nothing in its key changes: 12 steps of batches of 4 and 3 rows, an lr change, a step counter written
    and an optimizer state loaded in between give the losses, parameters, moments and step counts of the eager
    steps, with the captures and replays the key says."""
    torch.manual_seed(41)
    model = fastffnn.FastMLP(sizes, device=DEVICE)
    twin = copy.deepcopy(model)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.02, capturable=capturable)
    twin_opt = fastffnn.optim.Adam(twin.parameters(), lr=0.02, capturable=capturable)
    X, y = torch.randn(80, 6, device=DEVICE), torch.randint(0, 4, (80,), device=DEVICE)
    first = 0

    def both(rows):
        nonlocal first
        xb, yb = X[first:first + rows], y[first:first + rows]
        first += rows
        with device_steps() if capturable else contextlib.nullcontext():
            _same_loss(opt.train_step(model, xb, yb), _eager(lambda: twin_opt.train_step(twin, xb, yb)))

    for rows in (4, 4, 4, 4, 4):  # two warm-up steps, the capture (and its replay), two replays
        both(rows)
    assert (graphs.captures, graphs.replays) == (1, 3)
    for rows in (3, 3, 4, 3):  # a new key: warm-up, warm-up, the first graph again, then the new one's capture
        both(rows)
    assert (graphs.captures, graphs.replays) == (2, 5)
    for o in (opt, twin_opt):
        o.param_groups[0]["lr"] = 0.005
    for rows in (4, 4, 4):  # the lr is in the key: warm-up again
        both(rows)
    assert (graphs.captures, graphs.replays) == (3, 6)
    for o in (opt, twin_opt):  # written between two replays: the graph's counters follow
        o.state[next(iter(o.state))]["step"].fill_(40.0)
    both(4)
    assert (graphs.captures, graphs.replays) == (3, 7)
    opt.load_state_dict(copy.deepcopy(twin_opt.state_dict()))  # new state tensors: a new key
    for rows in (4, 4, 4, 4):
        both(rows)
    assert (graphs.captures, graphs.replays) == (4, 9)
    _assert_same_training_graphs(model, opt, twin, twin_opt, capturable)


@pytest.mark.parametrize("sizes", [[6, 9, 4], [6, 300, 4]], ids=["fused tier", "general tier (cuBLAS)"])
@pytest.mark.parametrize("hyper", [dict(momentum=0.9, nesterov=True), dict(momentum=0.8, dampening=0.3,
                                                                           weight_decay=0.01), dict()],
                         ids=["nesterov", "dampening and weight decay", "no momentum"])
def test_sgd_train_step_replays_a_cuda_graph_of_a_repeated_step_after_its_first(graphs, hyper, sizes):
    """SGD's train_step on CUDA is graphed as Adam's is, except for a step that creates momentum buffers: the
    first step and the first after the state was cleared run eagerly and out of the count of repeats, then the
    new buffers make a new key. Over 19 steps with two shapes and an lr change: the eager losses, parameters
    and buffers, and the captures and replays the key says."""
    torch.manual_seed(46)
    model = fastffnn.FastMLP(sizes, device=DEVICE)
    twin = copy.deepcopy(model)
    opt, twin_opt = (fastffnn.optim.SGD(m.parameters(), lr=0.05, **hyper) for m in (model, twin))
    X, y = torch.randn(80, 6, device=DEVICE), torch.randint(0, 4, (80,), device=DEVICE)
    first, fresh = 0, int("momentum" in hyper)  # the steps that create buffers

    def both(rows):
        nonlocal first
        xb, yb = X[first:first + rows], y[first:first + rows]
        first += rows
        _same_loss(opt.train_step(model, xb, yb), _eager(lambda: twin_opt.train_step(twin, xb, yb)))

    for rows in [4] * (fresh + graphs_module.WARMUP + 3):  # (the buffers' step,) two warm-ups, capture, 2 more
        both(rows)
    assert (graphs.captures, graphs.replays) == (1, 3)
    for rows in (3, 3, 3):
        both(rows)
    assert (graphs.captures, graphs.replays) == (2, 4)
    for o in (opt, twin_opt):
        o.param_groups[0]["lr"] = 0.02
    for rows in (4, 4, 4):
        both(rows)
    assert (graphs.captures, graphs.replays) == (3, 5)
    for o in (opt, twin_opt):
        o.state.clear()  # new buffers: their first step, then a new key
    for rows in (4, 4, 4, 4):
        both(rows)
    assert (graphs.captures, graphs.replays) == ((4, 6) if fresh else (3, 9))
    _assert_same_sgd_training(model, opt, twin, twin_opt)


def _assert_same_training_graphs(model, opt, twin, twin_opt, capturable):
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        mine, theirs = opt.state[p], twin_opt.state[q]
        assert mine["step"].device == theirs["step"].device
        for key in mine:
            _same_loss(mine[key].cpu(), theirs[key].cpu())
        _same_loss(p.detach(), q.detach())


def test_a_replayed_step_bumps_the_version_counters_and_returns_a_new_loss(graphs):
    """As the eager step: autograd refuses to backward through a graph recorded before a replayed step, and each
    replay's loss is a tensor of its own (a list of the losses keeps each step's)."""
    torch.manual_seed(42)
    model = fastffnn.FastMLP([5, 7, 3], device=DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.05)
    X, y = torch.randn(6, 5, device=DEVICE), torch.randint(0, 3, (6,), device=DEVICE)
    losses = [opt.train_step(model, X[2 * (i % 3):2 * (i % 3) + 2], y[2 * (i % 3):2 * (i % 3) + 2])
              for i in range(6)]
    assert graphs.replays == 4
    assert len({float(loss) for loss in losses[2:]}) == 4
    recorded = model.nll_loss(X[:2], y[:2])
    opt.train_step(model, X[:2], y[:2])
    assert graphs.replays == 5
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        recorded.backward()


def test_automatic_graphs_leave_a_tensor_lr_and_fastffnn_cuda_graphs_0_eager(graphs, monkeypatch):
    torch.manual_seed(43)
    model = fastffnn.FastMLP([5, 7, 3], device=DEVICE)
    X, y = torch.randn(2, 5, device=DEVICE), torch.randint(0, 3, (2,), device=DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=torch.tensor(0.01))
    for _ in range(4):
        opt.train_step(model, X, y)
    assert graphs.captures == 0
    monkeypatch.setattr(graphs_module, "ENABLED", False)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(4):
        opt.train_step(model, X, y)
    assert graphs.captures == 0


@pytest.mark.parametrize("sizes", [[6, 9, 4], [6, 300, 4]], ids=["fused tier", "general tier"])
def test_a_bad_class_index_under_a_capture_makes_the_loss_and_the_parameters_nan(sizes):
    """Under a capture nothing can read the labels back to range-check them: a class index outside [0, classes)
    gives its row a NaN loss and NaN gradients, so the captured update turns the parameters NaN (visibly wrong),
    on both tiers; without the capture the same step raises IndexError."""
    torch.manual_seed(44)
    model = fastffnn.FastMLP(sizes, device=DEVICE)
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01, capturable=True)
    X, y = torch.randn(3, 6, device=DEVICE), torch.tensor([1, 4, 0], device=DEVICE)
    with pytest.raises(IndexError):
        opt.train_step(model, X, y)
    if not EMULATED:
        return  # (a real capture runs nothing: the replays of test_capturable_adam_replays_... run such steps)
    with device_steps(), capturing():
        loss = opt.train_step(model, X, y)
    assert torch.isnan(loss)
    assert all(torch.isnan(p).any() for p in model.parameters())


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: device placement")
def test_adam_refuses_a_mix_of_cpu_and_device_counters():
    p = torch.nn.Parameter(torch.randn(4, device=DEVICE))
    q = torch.nn.Parameter(torch.randn(3, device=DEVICE))
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    steps = [torch.zeros((), device=DEVICE), torch.zeros(())]
    with pytest.raises(ValueError, match=r"steps\[1\] is Float on cpu"):
        torch.ops.fastffnn.adam_step_([p, q], [p.grad, q.grad], [torch.zeros_like(p), torch.zeros_like(q)],
                                      [torch.zeros_like(p), torch.zeros_like(q)], [], steps, 0.01, 0.9, 0.999, 1e-8,
                                      0.0, False, False, False)


@pytest.mark.skipif(EMULATED, reason="needs a real GPU: CUDA graphs")
def test_optimizer_step_refuses_a_cuda_graph_capture():
    """The step counters live on the CPU: a replayed capture would reuse one step's bias corrections."""
    p = torch.nn.Parameter(torch.randn(8, device=DEVICE))
    p.grad = torch.randn_like(p)
    opt = fastffnn.optim.Adam([p], lr=0.01)
    opt.step()  # state created outside the capture
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph: its step counters live on the CPU"):
        with torch.cuda.graph(graph):
            opt.step()
