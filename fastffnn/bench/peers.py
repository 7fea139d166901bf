"""What the benchmark times: stock PyTorch peers and FastFFNN, forward and training step.

Every implementation starts from the same weights (the stock model's
initialisation) and sees the same batch. The stock peers:

* ``eager``: the lecture's FFNN (``softmax(W(g(V x)))``) with its loss
  ``neg(log(probs)) . one_hot`` (a mean over the rows of a batch) and
  ``torch.optim.Adam()``;
* ``eager-ce``: the same model with ``F.cross_entropy`` on the logits;
* ``eager+fused``, ``eager-ce+fused``: both with ``Adam(fused=True)``;
* ``compile``: ``torch.compile`` of the cross-entropy forward and loss, with
  ``Adam(fused=True)`` (forward mode: ``torch.compile(model)``); its first
  call, the compilation, is timed separately;
* ``compile-ro`` (CUDA only): the same with ``mode="reduce-overhead"``, whose
  CUDA graphs replay the forward and the backward (the fused Adam step runs
  after them, outside the graphs, as in a loop that compiles its loss).

FastFFNN, from the least to the most change to the user's code:

* ``fastffnn``: the drop-in. Only the class changes: the same loss and the
  same ``torch.optim.Adam()`` as ``eager``;
* ``fastffnn+fused``: ``FastFFNN.nll_loss`` with ``Adam(fused=True)``;
* ``fastffnn+adam``: the lecture's loss with ``fastffnn.optim.Adam``,
  the same hyper-parameters as ``eager``'s;
* ``fastffnn-step``: ``FastFFNN.train_step``, the whole step in one call;
* ``fastffnn-fit``: ``fit``, fit_steps(batch) steps on the same batch
  in one call (the batches of an epoch without a Python loop: up to 1,024
  steps or 16,384 rows, as an epoch of digits' 1,797 examples runs them;
  ``fit``'s Python around the call, about 0.2-0.3 ms, was 3 µs of a
  64-step call's 7 µs steps at (64,64,10)); its times are per step. Its
  check runs one step.

The modes:

* ``forward``: the model under ``torch.no_grad()``;
* ``grad-forward``: the model's forward with autograd recording (its
  parameters require grad), the graph then dropped;
* ``forward-backward``: ``zero_grad``, forward, the lecture's loss and
  ``backward``, no optimizer;
* ``train``: a whole step: ``zero_grad``, forward, loss, ``backward``,
  ``optimizer.step()``.

``grad-forward`` and ``forward-backward`` compare the drop-in (``fastffnn``)
with ``eager`` alone: they are the two halves of the drop-in's step.

On CUDA, ``--tiers general,fused`` times every FastFFNN implementation once
per CUDA tier (``fastffnn.set_cuda_tier``), named ``fastffnn[general]``,
``fastffnn+fused[fused]`` and so on: the crossover between the tiers. The tier
is set before each timed block, never inside the timed calls.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mlp import FastMLP
from ..module import FastFFNN
from ..optim import Adam as FastAdam
from ..reference import LectureFFNN, lecture_loss

LR = 1e-3

STOCK = ["eager", "eager-ce", "eager+fused", "eager-ce+fused", "compile", "compile-ro"]
COMPILED = ("compile", "compile-ro")
CUDA_ONLY = ("compile-ro",)  # on the CPU, reduce-overhead's only difference (CUDA graphs) is off
FAST = ["fastffnn", "fastffnn+fused", "fastffnn+adam", "fastffnn-step", "fastffnn-fit"]
FIT_STEPS, FIT_ROWS = 1024, 16384


def fit_steps(batch: int) -> int:
    """The steps of one timed ``fit`` call at this batch size (see fastffnn-fit above)."""
    return max(1, min(FIT_STEPS, FIT_ROWS // max(batch, 1)))
FORWARD = ["eager", "compile", "compile-ro", "fastffnn"]
HALVES = ["eager", "fastffnn"]
MODES = ["forward", "grad-forward", "forward-backward", "train"]


@dataclass
class Point:
    """One measured point: a shape, a batch, a mode, on a device in a dtype."""

    shape: tuple[int, ...]  # (in, hidden..., out): one hidden width is the lecture's FFNN
    batch: int
    mode: str  # one of MODES
    device: torch.device
    dtype: torch.dtype = torch.float32

    def make_inputs(self, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """(x, class indices, one-hot gold); batch 1 is a 1-D input, as in the lecture's loop."""
        inp, out = self.shape[0], self.shape[-1]
        g = torch.Generator().manual_seed(seed)
        lead = () if self.batch == 1 else (self.batch,)
        x = torch.randn(*lead, inp, generator=g, dtype=self.dtype)
        y = torch.randint(0, out, lead, generator=g)
        gold = F.one_hot(y, out).to(self.dtype)
        return x.to(self.device), y.to(self.device), gold.to(self.device)


@dataclass
class Runner:
    """A ready-to-time call, the model it trains (for the correctness check) and its compile time.

    ``setup``, where set, runs before every block of calls (and before the check): the CUDA tier.
    """

    fn: Callable[[], object]
    model: nn.Module
    compile_s: float | None = None
    extra: dict = field(default_factory=dict)
    setup: Callable[[], object] | None = None


def split_tier(name: str) -> tuple[str, str | None]:
    """``"fastffnn+fused[general]"`` -> ``("fastffnn+fused", "general")``; a name without a tier -> (name, None)."""
    if name.endswith("]") and "[" in name:
        base, tier = name[:-1].split("[", 1)
        return base, tier
    return name, None


def with_tiers(names: list[str], tiers: list[str]) -> list[str]:
    """Each FastFFNN implementation once per tier; the stock peers as they are."""
    if not tiers:
        return names
    return [n for n in names if not n.startswith("fastffnn")] + [
        f"{n}[{t}]" for n in names if n.startswith("fastffnn") for t in tiers]


def available(point: Point) -> list[str]:
    """The implementations that apply to a point, in report order."""
    if point.mode in ("grad-forward", "forward-backward"):
        return list(HALVES)
    names = FORWARD if point.mode == "forward" else STOCK + FAST
    return [n for n in names if point.device.type == "cuda" or n not in CUDA_ONLY]


def _step(model: nn.Module, loss_fn: Callable[[], Tensor], opt: torch.optim.Optimizer) -> Callable[[], None]:
    def step():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    return step


class StockMLP(nn.Sequential):
    """The lecture's classifier with several hidden layers, as its users write it: an
    ``nn.Sequential(Linear, Tanh, ..., Linear, Softmax(dim=-1))``, with the lecture FFNN's ``logits``."""

    def __init__(self, *sizes: int, activation: str = "tanh"):
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(n_in, n_out), {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]()]
        super().__init__(*layers, nn.Linear(sizes[-2], sizes[-1]), nn.Softmax(dim=-1))

    def logits(self, x: Tensor) -> Tensor:
        for m in list(self)[:-1]:
            x = m(x)
        return x


def stock_model(shape: tuple[int, ...]) -> nn.Module:
    """The stock model a shape names: the lecture's FFNN for (in, hidden, out), else a StockMLP."""
    return LectureFFNN(*shape) if len(shape) == 3 else StockMLP(*shape)


def build(name: str, point: Point, stock: nn.Module, x: Tensor, y: Tensor, gold: Tensor) -> Runner:
    """The implementation ``name`` at ``point``, on fresh copies of ``stock``'s weights."""
    name, tier = split_tier(name)
    if tier is not None:
        from ..tier import set_cuda_tier

        set_cuda_tier(tier)  # the compile and first step below run in it too
        runner = build(name, point, stock, x, y, gold)
        runner.setup = lambda: set_cuda_tier(tier)
        return runner
    if name.startswith("fastffnn"):
        model: nn.Module = (FastFFNN if isinstance(stock, LectureFFNN) else FastMLP).from_module(stock)
    else:
        model = copy.deepcopy(stock)
    if point.mode == "forward":
        if name in COMPILED:
            compiled = torch.compile(model, mode="reduce-overhead" if name == "compile-ro" else None)
            t0 = time.perf_counter()
            with torch.no_grad():
                compiled(x)
            _sync(point.device)
            runner = Runner(lambda: _no_grad(compiled, x), model, compile_s=time.perf_counter() - t0)
            return runner
        return Runner(lambda: _no_grad(model, x), model)
    if point.mode == "grad-forward":
        return Runner(lambda: model(x), model)
    if point.mode == "forward-backward":
        def forward_backward():
            model.zero_grad()
            lecture_loss(model(x), gold).backward()

        return Runner(forward_backward, model)

    if name in ("eager", "eager+fused", "fastffnn", "fastffnn+adam"):
        def loss_fn():
            return lecture_loss(model(x), gold)
    elif name in ("eager-ce", "eager-ce+fused"):
        def loss_fn():
            return F.cross_entropy(model.logits(x), y)
    elif name == "fastffnn+fused":
        def loss_fn():
            return model.nll_loss(x, y)
    elif name == "compile":
        compiled_loss = torch.compile(lambda inp, target: F.cross_entropy(model.logits(inp), target))

        def loss_fn():
            return compiled_loss(x, y)
    elif name == "compile-ro":
        graphed_loss = torch.compile(lambda inp, target: F.cross_entropy(model.logits(inp), target),
                                     mode="reduce-overhead")

        def loss_fn():
            # a new iteration: the graphs' outputs of the step before may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
            return graphed_loss(x, y)
    elif name == "fastffnn-step":
        opt = FastAdam(model.parameters(), lr=LR)
        return Runner(lambda: opt.train_step(model, x, y), model)
    elif name == "fastffnn-fit":
        opt = FastAdam(model.parameters(), lr=LR)
        rows = x.reshape(-1, x.shape[-1])
        steps = fit_steps(point.batch)
        xs, ys = rows.repeat(steps, 1), y.reshape(-1).repeat(steps)

        def fit(X, Y):
            return lambda: model.fit(X, Y, opt, batch_size=point.batch, shuffle=False)

        return Runner(fit(xs, ys), model, extra={"steps_per_call": steps, "check_fn": fit(rows, y.reshape(-1))})
    else:
        raise ValueError(f"fastffnn bench: unknown implementation {name!r}; known: {STOCK + FAST}")

    if name in ("eager+fused", "eager-ce+fused", "compile", "compile-ro", "fastffnn+fused"):
        opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    elif name == "fastffnn+adam":
        opt = FastAdam(model.parameters(), lr=LR)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=LR)
    step = _step(model, loss_fn, opt)
    runner = Runner(step, model)
    if name in COMPILED:
        t0 = time.perf_counter()
        step()  # the first call compiles
        _sync(point.device)
        runner.compile_s = time.perf_counter() - t0
        runner.extra["stepped"] = True
    return runner


def _no_grad(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _params(model: nn.Module) -> list[tuple[str, Tensor]]:
    return list(model.named_parameters())


def check(name: str, runner: Runner, reference: Runner, point: Point, initial: list[Tensor]) -> str | None:
    """Runs one call of each and compares them; returns what disagreed, or None.

    Forward: the probabilities, to rtol 1e-4 / atol 1e-5. Training: after one
    step from the same weights, the parameters' update (new minus initial)
    must match the reference's to 1e-3 of its total size, summed over all
    elements (a wrong gradient moves most of Adam's first, sign-like update).
    """
    if point.mode in ("forward", "grad-forward"):
        out, ref = runner.fn(), reference.fn()
        try:
            torch.testing.assert_close(out.detach(), ref.detach(), rtol=1e-4, atol=1e-5)
        except AssertionError as e:
            return str(e).splitlines()[0]
        return None
    if point.mode == "forward-backward":
        runner.fn()
        reference.fn()
        for (label, p), (_, r) in zip(_params(runner.model), _params(reference.model)):
            try:
                torch.testing.assert_close(p.grad, r.grad, rtol=1e-4, atol=1e-5)
            except AssertionError as e:
                return f"{label}.grad: " + str(e).splitlines()[0]
        return None
    if not runner.extra.get("stepped"):
        runner.extra.get("check_fn", runner.fn)()
    if not reference.extra.get("stepped"):
        reference.fn()
        reference.extra["stepped"] = True
    runner.extra["stepped"] = True
    for (label, p), (_, r), p0 in zip(_params(runner.model), _params(reference.model), initial):
        delta, ref_delta = (p.detach() - p0).double(), (r.detach() - p0).double()
        err = (delta - ref_delta).abs().sum() / ref_delta.abs().sum().clamp_min(1e-30)
        if not torch.isfinite(err) or err > 1e-3:
            return f"{label}: first-step update differs from eager's by {err:.2e} (relative, summed)"
    return None
