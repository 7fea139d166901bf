"""The CUDA kernels against stock PyTorch in float64, on both tiers (skipped without a GPU).

Tolerances, as ‖error‖ / ‖reference‖-style rtol/atol per dtype:
* float32 with TF32 off ("exact"): rtol 1e-5, atol 1e-6: float32 rounding
  over reductions of up to a few thousand terms;
* float32 with TF32 on: rtol/atol 2e-3: TF32 keeps 10 mantissa bits
  (unit roundoff 5e-4) in the matrix products;
* bfloat16: 5e-2 and float16: 1e-2: their unit roundoffs are 4e-3 and 5e-4,
  and inputs, weights and outputs are all rounded to them.
Outputs are checked against poisoned memory: before each op, the caching
allocator is filled with NaN blocks, so an element a kernel never writes
comes back as NaN.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import fastffnn
from fastffnn import reference as ref

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")

TOL = {
    "float32": dict(rtol=1e-5, atol=1e-6),
    "tf32": dict(rtol=2e-3, atol=2e-3),
    "bfloat16": dict(rtol=5e-2, atol=5e-2),
    "float16": dict(rtol=1e-2, atol=1e-2),
}
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ACTIVATIONS = ["tanh", "relu", "sigmoid"]


@pytest.fixture(params=["auto", "general", "fused"])
def tier(request, monkeypatch):
    if request.param == "auto":
        monkeypatch.delenv("FASTFFNN_CUDA_TIER", raising=False)
    else:
        monkeypatch.setenv("FASTFFNN_CUDA_TIER", request.param)
    return request.param


@contextlib.contextmanager
def precision(mode):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def poison_allocator():
    """Fills the allocator's free blocks with NaN so unwritten outputs show up."""
    blocks = [torch.full((n,), float("nan"), device="cuda") for n in (1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 24)]
    del blocks


def network(in_f, hid, out, dtype, bias=True):
    Vw = torch.randn(hid, in_f, dtype=torch.float64) / max(in_f, 1) ** 0.5
    Ww = torch.randn(out, hid, dtype=torch.float64) / max(hid, 1) ** 0.5
    Vb = torch.randn(hid, dtype=torch.float64) * 0.5 if bias else None
    Wb = torch.randn(out, dtype=torch.float64) * 0.5 if bias else None
    return [p if p is None else p.to(dtype) for p in (Vw, Vb, Ww, Wb)]


def on_cuda(tensors, requires_grad=True):
    return [t if t is None else t.detach().cuda().requires_grad_(requires_grad) for t in tensors]


def check(ours_fn, ref_fn, inputs64, dtype, tol, grad=True, constant=()):
    """Runs ours on CUDA in `dtype` and the reference on the CPU in float64 from the same (rounded) values.

    Every floating input requires grad, except those whose positions are in `constant`.
    """
    rounded = [t if t is None else (t.to(dtype) if t.is_floating_point() else t) for t in inputs64]
    wants = [t is not None and t.is_floating_point() and i not in constant for i, t in enumerate(rounded)]
    ref_in = [t if t is None else (t.double().requires_grad_(w) if t.is_floating_point() else t)
              for t, w in zip(rounded, wants)]
    cuda_in = [t if t is None else (t.cuda().requires_grad_(w) if t.is_floating_point() else t.cuda())
               for t, w in zip(rounded, wants)]
    poison_allocator()
    ours = ours_fn(*cuda_in)
    expected = ref_fn(*ref_in)
    unwritten = torch.isnan(ours.detach().double().cpu()) & ~torch.isnan(expected.detach())
    assert not unwritten.any(), "an output element was never written (poison)"
    torch.testing.assert_close(ours.double().cpu(), expected, **tol)
    if grad:
        seed = torch.randn_like(expected)
        leaves_ours = [t for t in cuda_in if t is not None and t.requires_grad]
        leaves_ref = [t for t in ref_in if t is not None and t.requires_grad]
        poison_allocator()
        g_ours = torch.autograd.grad(ours, leaves_ours, seed.to(ours.dtype).cuda())
        g_ref = torch.autograd.grad(expected, leaves_ref, seed)
        for i, (a, b) in enumerate(zip(g_ours, g_ref)):
            assert not torch.isnan(a).any(), f"gradient {i} has unwritten elements"
            scale = b.abs().max().clamp_min(1.0)
            torch.testing.assert_close(a.double().cpu() / scale, b / scale, **tol,
                                       msg=lambda m, i=i: f"gradient {i}: {m}")


@pytest.mark.parametrize("mode", ["float32", "tf32", "bfloat16", "float16"])
@pytest.mark.parametrize("in_f,hid,out,batch", [
    (1, 1, 1, 1), (7, 100, 5, 33), (300, 100, 2, 0), (300, 255, 63, 4096), (300, 256, 64, 4097),
    (300, 257, 65, 33), (784, 256, 10, 4097), (1025, 257, 1000, 33),
])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ffnn(tier, mode, in_f, hid, out, batch, activation):
    x = torch.randn(batch, in_f, dtype=torch.float64)
    params = network(in_f, hid, out, torch.float64)
    with precision(mode):
        check(lambda *a: fastffnn.ffnn(*a, activation=activation), lambda *a: ref.ffnn(*a, activation=activation),
              [x, *params], DTYPES[mode], TOL[mode])


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_ffnn_large_batch(tier, activation):
    x = torch.randn(65537, 300, dtype=torch.float64)
    params = network(300, 100, 5, torch.float64)
    with precision("float32"):
        check(lambda *a: fastffnn.ffnn(*a, activation=activation), lambda *a: ref.ffnn(*a, activation=activation),
              [x, *params], torch.float32, TOL["float32"])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("lead", [(), (3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_ffnn_shapes(tier, log, lead, bias):
    x = torch.randn(*lead, 7, dtype=torch.float64)
    params = network(7, 100, 5, torch.float64, bias)
    with precision("float32"):
        check(lambda *a: fastffnn.ffnn(*a, log=log), lambda *a: ref.ffnn(*a, log=log), [x, *params],
              torch.float32, TOL["float32"])


@pytest.mark.parametrize("mode", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["index", "probs", "probs-with-grad"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch", [0, 1, 33, 4096])
def test_ffnn_nll(tier, mode, kind, reduction, batch):
    x = torch.randn(batch, 300, dtype=torch.float64)
    params = network(300, 100, 5, torch.float64)
    y = torch.randint(0, 5, (batch,)) if kind == "index" else torch.softmax(torch.randn(batch, 5, dtype=torch.float64), -1)
    with precision(mode):
        check(lambda *a: fastffnn.ffnn_nll(*a[:5], a[5], reduction=reduction),
              lambda *a: ref.ffnn_nll(*a[:5], a[5], reduction=reduction), [x, *params, y], DTYPES[mode], TOL[mode],
              constant=(5,) if kind == "probs" else ())


@pytest.mark.parametrize("frozen", [(0,), (0, 1, 2), (0, 1, 2, 3)], ids=["x", "x,V", "x,V,W.weight"])
def test_gradients_only_for_what_requires_them(tier, frozen):
    x = torch.randn(33, 300, dtype=torch.float64)
    params = network(300, 100, 5, torch.float64)
    y = torch.randint(0, 5, (33,))
    with precision("float32"):
        check(lambda *a: fastffnn.ffnn(*a), lambda *a: ref.ffnn(*a), [x, *params], torch.float32, TOL["float32"],
              constant=frozen)
        check(lambda *a: fastffnn.ffnn_nll(*a[:5], a[5]), lambda *a: ref.ffnn_nll(*a[:5], a[5]), [x, *params, y],
              torch.float32, TOL["float32"], constant=frozen)


@pytest.mark.parametrize("mode", ["float32", "float16"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("batch,in_f,out", [(0, 7, 5), (1, 1, 1), (33, 300, 100), (4097, 257, 1000)])
def test_linear_ops(mode, activation, batch, in_f, out):
    x = torch.randn(batch, in_f, dtype=torch.float64)
    w = torch.randn(out, in_f, dtype=torch.float64) / in_f ** 0.5
    b = torch.randn(out, dtype=torch.float64)
    with precision(mode):
        check(lambda *a: fastffnn.linear_act(*a, activation), lambda *a: ref.linear_act(*a, activation), [x, w, b],
              DTYPES[mode], TOL[mode])
        for log in (False, True):
            check(lambda *a: fastffnn.linear_softmax(*a, log), lambda *a: ref.linear_softmax(*a, log), [x, w, b],
                  DTYPES[mode], TOL[mode])


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("batch,classes", [(0, 5), (1, 1), (33, 2), (4097, 1000)])
def test_softmax_nll(kind, reduction, batch, classes):
    z = torch.randn(batch, classes, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (batch,)) if kind == "index" else torch.softmax(torch.randn(batch, classes, dtype=torch.float64), -1)
    check(lambda *a: fastffnn.softmax_nll(*a, reduction), lambda *a: ref.softmax_nll(*a, reduction), [z, y],
          torch.float32, TOL["float32"])


def test_float64_works_for_gradcheck(tier):
    x, *params = on_cuda([torch.randn(4, 3, dtype=torch.float64), *network(3, 6, 5, torch.float64)])
    assert torch.autograd.gradcheck(lambda *a: fastffnn.ffnn(*a), (x, *params))


def test_huge_logits_stay_finite_and_bad_targets_are_refused():
    z = torch.tensor([[1e4, -1e4, 0.0]], device="cuda")
    w = torch.diag(z[0])  # ones(1, 3) @ w.T gives the logits z
    p = fastffnn.linear_softmax(torch.ones(1, 3, device="cuda"), w, None)
    assert torch.isfinite(p).all() and torch.allclose(p.cpu(), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.isfinite(fastffnn.softmax_nll(z, torch.tensor([1], device="cuda"))).all()
    with pytest.raises(IndexError, match="class index 3"):
        fastffnn.softmax_nll(z, torch.tensor([3], device="cuda"))


def test_same_input_same_bits(tier):
    torch.manual_seed(0)
    x = torch.randn(4097, 300, device="cuda")
    model = fastffnn.FastFFNN(300, 256, 10).cuda()
    y = torch.randint(0, 10, (4097,), device="cuda")
    results = []
    for _ in range(2):
        model.zero_grad()
        loss = model.nll_loss(x, y)
        loss.backward()
        results.append([loss.detach().clone()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


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


def test_module_and_checkpoints_move_between_devices():
    model = fastffnn.FastFFNN(7, 10, 5)
    x = torch.randn(4, 7)
    expected = model(x)
    torch.testing.assert_close(model.cuda()(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-6)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    back = fastffnn.FastFFNN(7, 10, 5)
    back.load_state_dict(state)
    torch.testing.assert_close(back(x), expected)
    with pytest.raises(ValueError, match="V_weight is on cuda"):
        fastffnn.ffnn(x, model.V.weight, None, model.W.weight.cpu(), None)
