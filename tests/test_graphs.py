"""fastffnn/_graphs.py's bookkeeping around a replay, with a graph of no kernels: what a replay must do on the host
because the graph's kernels cannot (the step counters on the CPU, the version counters, a new loss tensor).

Runs on the CPU build: the stub backend serves CPU tensors, so train_step's native call on the CPU is what the
warm-up steps run. The replays themselves (the kernels of a captured step, the device step counters they advance)
are tests/test_cuda.py's, on the CUDA emulator and on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import fastffnn
from fastffnn import _graphs


class NoKernels:
    """A capture that holds nothing and a replay that runs nothing: the loss it gives is its placeholder."""

    def __init__(self):
        self.captured, self.replays = [], 0

    @staticmethod
    def serves(t):
        return True

    def capture(self, fn, device):
        out = torch.full((), 7.0)
        self.captured.append(out)
        return None, out

    def replay(self, graph):
        self.replays += 1


@pytest.fixture
def stub(monkeypatch):
    backend = NoKernels()
    monkeypatch.setattr(_graphs, "backend", backend)
    monkeypatch.setattr(_graphs, "ENABLED", True)
    return backend


def test_a_replay_advances_the_cpu_counters_bumps_the_versions_and_returns_a_new_loss(stub):
    torch.manual_seed(0)
    model = fastffnn.FastMLP([4, 6, 3])
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)
    x, y = torch.randn(2, 4), torch.randint(0, 3, (2,))
    for _ in range(_graphs.WARMUP):
        opt.train_step(model, x, y)
    assert stub.captured == []
    params = list(model.parameters())
    states = [t for p in params for k, t in opt.state[p].items() if k != "step"]
    steps = [opt.state[p]["step"] for p in params]
    before = [p.detach().clone() for p in params]
    versions = [t._version for t in params + states]
    loss = opt.train_step(model, x, y)  # the capture, then its first replay
    assert len(stub.captured) == 1 and stub.replays == 1
    assert loss is not stub.captured[0] and float(loss) == 7.0  # a copy of the graph's output
    assert all(torch.equal(a, p) for a, p in zip(before, params))  # (the graph ran nothing)
    assert [float(s) for s in steps] == [_graphs.WARMUP + 1.0] * len(steps)  # advanced on the host
    assert all(t._version > v for t, v in zip(params + states, versions))  # as the eager update bumps them
    graphed = next(iter(opt._graph_cache.graphs.values()))
    # the device counters the graph advances were filled with the CPU counts before the replay
    assert [float(c) for c in graphed.counters] == [float(_graphs.WARMUP)] * len(steps)
    second = opt.train_step(model, x, y)
    assert second is not loss and stub.replays == 2
    assert [float(c) for c in graphed.counters] == [float(_graphs.WARMUP)] * len(steps)  # not filled again
    steps[1].fill_(20.0)  # a counter written between replays goes to the graph's counter before the next
    opt.train_step(model, x, y)
    assert [float(c) for c in graphed.counters][:2] == [_graphs.WARMUP + 2.0, 20.0]
    assert [float(s) for s in steps][:2] == [_graphs.WARMUP + 3.0, 21.0]
    steps[2].data.fill_(30.0)  # written where no version moves: seen by its value
    opt.train_step(model, x, y)
    assert [float(c) for c in graphed.counters][:3] == [_graphs.WARMUP + 3.0, 21.0, 30.0]
    assert [float(s) for s in steps][:3] == [_graphs.WARMUP + 4.0, 22.0, 31.0]


@pytest.mark.parametrize("setting", ["allow_tf32", "allow_fp16_reduced_precision_reduction", "deterministic",
                                     "cuda tier"])
def test_a_setting_the_kernels_are_chosen_by_is_in_the_key(stub, setting):
    """A graph holds the kernels chosen when it was captured: after a change of TF32, cuBLAS's reduced-precision
    reductions, deterministic algorithms or the CUDA tier, the same step warms up and is captured anew, and the
    old graph is replayed again once the setting is back (not the tier's)."""
    torch.manual_seed(7)
    model = fastffnn.FastMLP([4, 6, 3])
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 4), torch.randint(0, 3, (2,))
    matmul = torch.backends.cuda.matmul
    old = {"allow_tf32": matmul.allow_tf32 if setting == "allow_tf32" else None,
           "allow_fp16_reduced_precision_reduction": matmul.allow_fp16_reduced_precision_reduction,
           "deterministic": torch.are_deterministic_algorithms_enabled(),
           "cuda tier": fastffnn.cuda_tier()}[setting]

    def change(back=False):
        if setting == "deterministic":
            torch.use_deterministic_algorithms(old if back else not old)
        elif setting == "cuda tier":
            fastffnn.set_cuda_tier(old if back else ("general" if old != "general" else "fused"))
        else:
            setattr(matmul, setting, old if back else not old)

    for _ in range(_graphs.WARMUP + 1):
        opt.train_step(model, x, y)
    assert (len(stub.captured), stub.replays) == (1, 1)
    change()
    try:
        for _ in range(_graphs.WARMUP):
            opt.train_step(model, x, y)
        assert (len(stub.captured), stub.replays) == (1, 1)
        opt.train_step(model, x, y)
        assert (len(stub.captured), stub.replays) == (2, 2)
    finally:
        change(back=True)
    opt.train_step(model, x, y)
    # (each set_cuda_tier advances the tier's generation, setting it back too: no old graph is replayed then)
    assert (len(stub.captured), stub.replays) == ((2, 2) if setting == "cuda tier" else (2, 3))


def test_graphs_keep_four_keys(stub):
    torch.manual_seed(2)
    model = fastffnn.FastMLP([4, 6, 3])
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    for rows in (1, 2, 3, 4, 5):
        x, y = torch.randn(rows, 4), torch.randint(0, 3, (rows,))
        for _ in range(_graphs.WARMUP + 1):
            opt.train_step(model, x, y)
    assert len(stub.captured) == 5 and len(opt._graph_cache.graphs) == _graphs.KEPT
    assert [key[1] for key in opt._graph_cache.graphs] == [(rows, 4) for rows in (2, 3, 4, 5)]


def test_sgd_graphs_the_steps_after_the_one_that_creates_its_momentum_buffers(stub):
    """SGD's first step sets the new momentum buffers to the gradients (a replay would do it again): it runs as it
    is, outside the count of repeats, and so does the step after a buffer is dropped; the steps with buffers are
    captured at their key's third time and replayed, bumping the buffers' versions, with the buffers kept in the
    state; a Tensor lr is read into the key."""
    torch.manual_seed(6)
    model = fastffnn.FastMLP([4, 6, 3])
    lr = torch.tensor(0.01)
    opt = fastffnn.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = torch.randn(2, 4), torch.randint(0, 3, (2,))
    params = list(model.parameters())
    opt.train_step(model, x, y)  # creates the buffers
    assert "_graph_cache" not in opt.__dict__
    buffers = [opt.state[p]["momentum_buffer"] for p in params]
    for _ in range(_graphs.WARMUP):
        opt.train_step(model, x, y)
    assert stub.captured == []
    versions = [t._version for t in params + buffers]
    opt.train_step(model, x, y)
    assert len(stub.captured) == 1 and stub.replays == 1
    assert all(t._version > v for t, v in zip(params + buffers, versions))
    assert all(opt.state[p]["momentum_buffer"] is b for p, b in zip(params, buffers))
    del opt.state[params[2]]["momentum_buffer"]  # a new buffer: its first step runs as it is
    opt.train_step(model, x, y)
    assert stub.replays == 1 and opt.state[params[2]]["momentum_buffer"] is not buffers[2]
    for _ in range(_graphs.WARMUP + 1):  # then a new key: the buffer's identity is in it
        opt.train_step(model, x, y)
    assert len(stub.captured) == 2 and stub.replays == 2
    lr.fill_(0.02)  # the lr's value is in the key
    opt.train_step(model, x, y)
    assert len(stub.captured) == 2 and stub.replays == 2
    without = fastffnn.optim.SGD(model.parameters(), lr=0.01)  # no momentum, no buffers: graphed from the start
    for _ in range(_graphs.WARMUP + 1):
        without.train_step(model, x, y)
    assert len(stub.captured) == 3 and stub.replays == 3


def test_a_failed_capture_leaves_its_key_eager_with_a_warning(stub, monkeypatch):
    """A capture that raises (say, something in the step that a graph cannot hold): the step runs eagerly, with a
    warning, and so do the later steps of that key, without trying again."""
    attempts = []

    def failing(fn, device):
        attempts.append(device)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(stub, "capture", failing)
    torch.manual_seed(3)
    model = fastffnn.FastMLP([4, 6, 3])
    twin = fastffnn.FastMLP([4, 6, 3])
    twin.load_state_dict(model.state_dict())
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    twin_opt = fastffnn.optim.Adam(twin.parameters(), lr=0.01)
    x, y = torch.randn(2, 4), torch.randint(0, 3, (2,))
    with pytest.warns(RuntimeWarning, match="could not be captured in a CUDA graph"):
        for _ in range(_graphs.WARMUP + 3):
            loss = opt.train_step(model, x, y)
            monkeypatch.setattr(_graphs, "ENABLED", False)
            assert torch.equal(loss, twin_opt.train_step(twin, x, y))
            monkeypatch.setattr(_graphs, "ENABLED", True)
    assert len(attempts) == 1 and stub.replays == 0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


def test_load_state_dict_drops_the_graphs_of_the_old_state(stub):
    torch.manual_seed(4)
    model = fastffnn.FastMLP([4, 6, 3])
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    x, y = torch.randn(2, 4), torch.randint(0, 3, (2,))
    for _ in range(_graphs.WARMUP + 1):
        opt.train_step(model, x, y)
    assert len(opt._graph_cache.graphs) == 1
    opt.load_state_dict(opt.state_dict())
    assert "_graph_cache" not in opt.__dict__


@pytest.mark.parametrize("layout", ["transposed", "expanded", "strided rows"])
def test_a_graphed_step_takes_inputs_of_any_layout(stub, layout):
    """The graph's input buffers take the input's strides where they are dense, else are contiguous: an expanded
    (stride 0) or a strided input copies into them at every replay."""
    torch.manual_seed(5)
    model = fastffnn.FastMLP([4, 6, 3])
    opt = fastffnn.optim.Adam(model.parameters(), lr=0.01)
    x = {"transposed": torch.randn(4, 3).t(), "expanded": torch.randn(1, 4).expand(3, 4),
         "strided rows": torch.randn(6, 4)[::2]}[layout]
    y = torch.randint(0, 3, (3,))
    for _ in range(_graphs.WARMUP + 2):
        opt.train_step(model, x, y)
    assert stub.replays == 2
    graphed = next(iter(opt._graph_cache.graphs.values()))
    assert torch.equal(graphed.x, x)
