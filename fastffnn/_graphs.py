"""Automatic CUDA graphs for ``train_step`` on CUDA: a step repeated unchanged is captured once and replayed.

The lecture's loop on a GPU is bound by launches: a small network's step takes microseconds on the device and
tens of microseconds of launches on the host. ``train_step``'s one native call is therefore captured into a
CUDA graph when the same step comes three times in a row (the first two run as they are and warm up), and
replayed from then on, as torch.compile's reduce-overhead mode does: the batch is copied into the graph's input
buffers, the graph replays, and the loss is copied out. "The same step" is the key below: the input's and the
target's shapes, dtypes and strides, the reduction and activations, the parameters and the optimizer's state
tensors (which objects, and where their memory is), the hyper-parameters, and the settings the kernels are
chosen by (TF32, cuBLAS's reduced-precision reductions, the CUDA tier, deterministic algorithms). A step whose
key has no graph runs eagerly; each optimizer keeps the graphs of its last four keys.

A replay keeps what the eager step keeps:

* Adam's step counters. The graph advances device copies of them, and the CPU counters (``state["step"]``) are
  advanced after each replay, so that ``state_dict()`` and LR schedulers see the same counts; a counter written
  in between (its value is not the one the last replay left: written in place, or through ``.data``) is
  copied to the device before the next replay. With ``capturable=True`` the
  graph advances the counters themselves.
* The version counters of the parameters and the state, bumped by each replay as by the eager update, so that
  autograd refuses to backward through a graph recorded before the step.
* A new loss tensor each step (a copy of the graph's output).

What it cannot keep: an eager step raises ``IndexError`` for a class index outside ``[0, classes)``, which needs
two numbers read back; a replay reads nothing back, and that row's loss and gradients are NaN instead (the ops'
behaviour under any capture), so the update turns the parameters NaN. Adam's Tensor lr (a tensor argument of its
op, read on the host) and torch.compile keep the eager step, and so does a key whose capture failed (with a
warning). SGD's steps are graphed as Adam's are (its lr, a Tensor too, is read into the key as a number), except a
step that creates momentum buffers (torch's first step sets them to the gradient, which a replay would do again): a
step with a new buffer runs eagerly and is not counted, and the steps after it are captured once their key has come
WARMUP times (with a momentum, the first replay is at the fourth step).

``FASTFFNN_CUDA_GRAPHS=0`` turns it off (read at import).
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from itertools import chain

import torch
from torch.autograd.graph import increment_version

ENABLED = os.environ.get("FASTFFNN_CUDA_GRAPHS", "1") != "0"
WARMUP = 2  # eager steps of one key before its capture
KEPT = 4  # graphs kept per optimizer
_tier_generation = 0  # advanced by fastffnn.set_cuda_tier: a graph holds the kernels of the tier it was captured in
# increment_version takes a list from torch 2.5 on (setup.py allows 2.4)
_VERSIONS_AT_ONCE = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def tier_changed() -> None:
    global _tier_generation
    _tier_generation += 1


class _TorchGraphs:
    """The graphs themselves: torch.cuda.CUDAGraph, for CUDA tensors. (The tests of the emulated build put an
    emulation of its capture and replay here.)"""

    @staticmethod
    def serves(t: torch.Tensor) -> bool:
        # inside the user's own capture the step is captured there, as it is
        return t.is_cuda and not torch.cuda.is_current_stream_capturing()

    @staticmethod
    def capture(fn, device: torch.device):
        """((graph, device index), fn's outputs) of a capture of fn on a side stream of `device`, with a private
        memory pool. (torch.cuda.graph's own default stream is made once, on whichever device was current.)"""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device):
            with torch.cuda.graph(graph, stream=torch.cuda.Stream(device)):
                out = fn()
        return (graph, device.index), out

    @staticmethod
    def replay(handle) -> None:
        graph, index = handle
        if torch.cuda.current_device() == index:
            graph.replay()
        else:  # a replay launches on the current device's stream
            with torch.cuda.device(index):
                graph.replay()


backend = _TorchGraphs


class _Graphed:
    """One captured step: its graph, its input and output buffers, and the device step counters it advances."""

    __slots__ = ("graph", "x", "y", "loss", "held", "counters", "cpu_steps", "views", "counts", "written")

    def __init__(self, graph, x, y, loss, held, counters, cpu_steps, written):
        self.graph, self.x, self.y, self.loss, self.held = graph, x, y, loss, held
        self.counters, self.cpu_steps = counters, cpu_steps
        # the CPU counters advanced through numpy views of them (a fraction of a µs each, where torch's in-place
        # add takes ~3), their versions bumped with the others'
        self.views = [s.numpy() for s in cpu_steps]
        self.written = written + cpu_steps
        self.counts = None  # the CPU counters' values after the last replay; None: copy them before the next

    def run(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.x.copy_(input)
        self.y.copy_(target)
        steps = self.cpu_steps
        if steps:
            # by value, not by version: a write through .data bumps no version
            now = [view.item() for view in self.views]
            if now != self.counts:
                # fill_ takes the value as an argument: no copy from pageable memory, no wait
                for counter, value in zip(self.counters, now):
                    counter.fill_(value)
        backend.replay(self.graph)
        if steps:
            # (an item assignment: numpy's in-place add on a 0-d array takes ~2 µs)
            self.counts = [value + 1.0 for value in now]
            for view, value in zip(self.views, self.counts):
                view[()] = value
        if _VERSIONS_AT_ONCE:
            increment_version(self.written)
        else:
            for t in self.written:
                increment_version(t)
        return self.loss.clone()


class Cache:
    """An optimizer's graphs, by key, and the key of the steps before."""

    __slots__ = ("graphs", "last", "repeats")

    def __init__(self) -> None:
        self.graphs: OrderedDict = OrderedDict()
        self.last = None
        self.repeats = 0


_EAGER = object()  # a key whose capture failed


def _setting(name: str):
    """torch's C getter of a setting (the Python properties around them cost microseconds a step), or a stand-in
    giving None where this torch has no such setting."""
    return getattr(torch._C, name, lambda: None)


# TF32 (legacy flag and fp32_precision alike), cuBLAS's reduced-precision reductions and fp16 accumulation,
# deterministic algorithms: what the kernels of a step are chosen by
_TF32, _FP16_REDUCTION, _BF16_REDUCTION, _FP16_ACCUMULATION, _DETERMINISTIC = map(_setting, (
    "_get_cublas_allow_tf32", "_get_cublas_allow_fp16_reduced_precision_reduction",
    "_get_cublas_allow_bf16_reduced_precision_reduction", "_get_cublas_allow_fp16_accumulation",
    "_get_deterministic_algorithms"))


def _settings():
    return (_TF32(), _FP16_REDUCTION(), _BF16_REDUCTION(), _FP16_ACCUMULATION(), _DETERMINISTIC(), _tier_generation)


def serves(input: torch.Tensor) -> bool:
    return ENABLED and backend.serves(input) and not torch.compiler.is_compiling()


def step(opt, run, input, target, key, written, steps=(), held=None):
    """train_step's native call ``run(input, target, steps)``: replayed from a graph where this step's key has one,
    captured where the key came WARMUP times in a row before, else run as it is.

    ``key`` is the optimizer's part of the key (its tensors' identities and addresses, the hyper-parameters, the
    activations and reduction); ``written``: the tensors the step updates in place (their versions are bumped at
    each replay); ``steps``: Adam's step counters; ``held``: what the key's identities come from, kept alive
    with the graph so that no other object takes an identity of the key while it is cached.
    """
    key = (key, tuple(input.shape), input.dtype, input.device, input.stride(), tuple(target.shape), target.dtype,
           target.stride(), _settings())
    cache = opt.__dict__.get("_graph_cache")
    if cache is None:
        cache = opt.__dict__["_graph_cache"] = Cache()
    graphed = cache.graphs.get(key)
    if graphed is None:
        cache.repeats = cache.repeats + 1 if key == cache.last else 1
        cache.last = key
        if cache.repeats <= WARMUP:
            return run(input, target, steps)
        try:
            graphed = _capture(run, input, target, written, steps, held)
        except Exception as e:  # noqa: BLE001 - the step itself has not run: it runs eagerly, as this key will
            warnings.warn(f"fastffnn: train_step could not be captured in a CUDA graph ({type(e).__name__}: {e}); "
                          "its steps of this shape run eagerly", RuntimeWarning, stacklevel=4)
            graphed = _EAGER
        cache.graphs[key] = graphed
        if len(cache.graphs) > KEPT:
            cache.graphs.popitem(last=False)
    else:
        cache.graphs.move_to_end(key)
    if graphed is _EAGER:
        return run(input, target, steps)
    return graphed.run(input, target)


def _capture(run, input, target, written, steps, held) -> _Graphed:
    capturable = bool(steps) and steps[0].device.type != "cpu"
    # CPU counters: the graph advances device copies of them (filled before its first replay)
    counters = list(steps) if capturable else [torch.empty((), dtype=s.dtype, device=input.device) for s in steps]
    # filled at each replay (a capture runs nothing); the input's strides where they are dense, so that the graph
    # holds the kernels the eager steps chose, else contiguous (an expanded input cannot be copied into its like)
    x = torch.empty_like(input, memory_format=torch.preserve_format)
    y = torch.empty_like(target, memory_format=torch.preserve_format)
    graph, loss = backend.capture(lambda: run(x, y, counters), input.device)
    return _Graphed(graph, x, y, loss, held, counters, [] if capturable else list(steps),
                    list(chain(written, counters if capturable else ())))
