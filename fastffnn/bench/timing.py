"""Timing: an idle machine first, then interleaved blocks of calls, summarised as median and IQR.

Shared VMs drift by tens of percent over seconds, so the implementations of
one measured point are timed round-robin, one block each per round: a slow
spell then hits every implementation alike, and the ratios between them hold
even when the absolute times wander. Each block is long enough (``block_s``)
for the clock's resolution not to matter; the spread between blocks is the
point's IQR, and a point whose IQR exceeds ``NOISY_IQR`` of its median is
flagged as noisy in the report.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils.benchmark as tb

from .._platform import cpu_name

# A point whose interquartile range is above this fraction of its median is flagged.
NOISY_IQR = 0.10
# While we sleep, other processes using more than this fraction of all CPUs count as "busy".
BUSY_FRACTION = 0.25


@dataclass
class Stats:
    """Seconds per call over the blocks of one implementation at one point."""

    median: float
    q1: float
    q3: float
    blocks: int
    calls_per_block: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def noisy(self) -> bool:
        return self.median > 0 and self.iqr > NOISY_IQR * self.median


def _cpu_busy_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def others_load(sample_s: float = 0.25) -> float | None:
    """The fraction of all CPUs busy while this process sleeps for ``sample_s``; None where unknown."""
    try:
        busy0, total0 = _cpu_busy_jiffies()
        time.sleep(sample_s)
        busy1, total1 = _cpu_busy_jiffies()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_for_idle(max_wait_s: float) -> tuple[bool, float | None]:
    """Waits up to ``max_wait_s`` for the other processes to leave the CPUs; returns (idle, last load seen)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = others_load()
        if load is None or load <= BUSY_FRACTION:
            return True, load
        if time.monotonic() >= deadline:
            return False, load
        time.sleep(1.0)


class BlockTimer:
    """Times ``number`` back-to-back calls of a function: seconds per call.

    On the CPU it is torch.utils.benchmark's Timer with an explicit thread
    count; on CUDA, a pair of CUDA events around the calls on the current
    stream, read after the stream is synchronised.
    """

    def __init__(self, device: torch.device, threads: int):
        self.device = device
        self.threads = threads

    def __call__(self, fn: Callable[[], object], number: int) -> float:
        if self.device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / number
        timer = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=self.threads)
        return timer.timeit(number).mean

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure(fns: dict[str, Callable[[], object]], timer: BlockTimer, block_s: float, blocks: int,
            warmup: int = 2, setups: dict[str, Callable[[], object]] | None = None) -> dict[str, Stats]:
    """Median and IQR of seconds per call for each function, timed in interleaved blocks.

    ``setups[name]``, where given, runs untimed before each of that function's blocks.
    """
    setups = setups or {}

    def setup(name: str) -> None:
        if name in setups:
            setups[name]()

    numbers = {}
    for name, fn in fns.items():
        setup(name)
        for _ in range(warmup):
            fn()
        timer.sync()
        one = timer(fn, 1)
        numbers[name] = max(1, math.ceil(block_s / max(one, 1e-7)))
    per_call: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            setup(name)
            per_call[name].append(timer(fn, numbers[name]))
    out = {}
    for name, times in per_call.items():
        times.sort()
        if len(times) >= 4:
            q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
        else:
            q1, q3 = times[0], times[-1]
        out[name] = Stats(statistics.median(times), q1, q3, len(times), numbers[name])
    return out


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name from /proc/cpuinfo."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()
