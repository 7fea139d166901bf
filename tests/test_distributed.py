"""DistributedDataParallel: 2 processes on gloo (and on nccl with 2 GPUs) give the gradients of one process
over the concatenated batch."""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import time
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastffnn import FastFFNN, FastMLP

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(kind: str) -> torch.nn.Module:
    """The lecture's network, or a FastMLP of two hidden layers (the network op of any depth)."""
    if kind == "ffnn":
        return FastFFNN(7, 9, 4, dtype=torch.float64)
    return FastMLP([7, 9, 6, 4], ["tanh", "relu"], dtype=torch.float64)


def _worker(rank: int, backend: str, port: int, state: dict, x: torch.Tensor, y: torch.Tensor,
            out_dir: str, kind: str) -> None:
    # gloo on the loopback interface: the machine's hostname need not resolve to a reachable address
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    model = _model(kind).to(device)
    model.load_state_dict(state)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    xs, ys = x.chunk(WORLD)[rank].to(device), y.chunk(WORLD)[rank].to(device)
    loss = torch.nn.functional.nll_loss(torch.log(ddp(xs)), ys) + ddp.module.nll_loss(xs, ys)
    loss.backward()
    torch.save({k: p.grad.cpu() for k, p in model.named_parameters()}, os.path.join(out_dir, f"grads{rank}.pt"))
    dist.barrier()  # both ranks have saved; the process group goes away with the processes


BACKENDS = ["gloo", pytest.param("nccl", marks=pytest.mark.skipif(
    torch.cuda.device_count() < 2 or not dist.is_nccl_available(), reason="nccl needs 2 GPUs"))]


@pytest.mark.parametrize("kind", ["ffnn", "mlp"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ddp_gradients_equal_single_process_over_the_whole_batch(tmp_path, backend, kind):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    model = _model(kind)
    x = torch.randn(12, 7, dtype=torch.float64)
    y = torch.randint(0, 4, (12,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    context = mp.spawn(_worker, args=(backend, _free_port(), state, x, y, str(tmp_path), kind), nprocs=WORLD,
                       join=False)
    deadline = time.monotonic() + 180
    # join returns False while some process still runs (it raises if one failed)
    while not context.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"the {WORLD} DDP processes did not finish within 180 s")
    loss = torch.nn.functional.nll_loss(torch.log(model(x)), y) + model.nll_loss(x, y)
    loss.backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, msg=f"rank {rank}, {name}")


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_torchrun_example_from_the_readme():
    pytest.importorskip("sklearn")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "examples/ddp_digits.py", "--epochs", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=dict(os.environ, GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "epoch 2:" in proc.stdout and "(2 processes)" in proc.stdout
