"""A long run: training steps through every path, with the process's resident memory sampled as it goes.

Usage:
    python benchmarks/soak.py [--steps 100000] [--every 10000] [--max-growth-mb 16]

Each step cycles through the ways a user trains FastFFNN: the one-call
train_step (one example, then a batch), and the autograd path (nll_loss,
backward, torch.optim.Adam) with a batch and with a 1-D example. It prints
the resident set size (RSS, from /proc/self/statm) every --every steps and
exits with status 1 if RSS grew by more than --max-growth-mb after the first
tenth of the run (the warm-up, where caches and allocator pools fill).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import fastffnn


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(steps: int, every: int, report=print) -> list[tuple[int, float]]:
    """Runs `steps` training steps; returns (step, RSS MB) samples, the first taken after warm-up."""
    torch.manual_seed(0)
    model = fastffnn.FastFFNN(64, 48, 10)
    fast_opt = fastffnn.optim.Adam(model.parameters(), lr=1e-3)
    stock_opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(256, 64)
    y = torch.randint(0, 10, (256,))
    warmup = max(1, steps // 10)
    samples = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        i = step % 256
        kind = step % 4
        if kind == 0:
            model.train_step(x[i], y[i], fast_opt)
        elif kind == 1:
            model.train_step(x[i:i + 8], y[i:i + 8], fast_opt)
        else:
            stock_opt.zero_grad()
            xb, yb = (x[i:i + 8], y[i:i + 8]) if kind == 2 else (x[i], y[i])
            model.nll_loss(xb, yb).backward()
            stock_opt.step()
        if step == warmup or step % every == 0 or step == steps:
            samples.append((step, rss_mb()))
            report(f"step {step:>8}: RSS {samples[-1][1]:8.1f} MB, {step / (time.perf_counter() - start):,.0f} steps/s")
    return samples


def growth_mb(samples: list[tuple[int, float]]) -> float:
    return max(m for _, m in samples) - samples[0][1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--every", type=int, default=10_000)
    p.add_argument("--max-growth-mb", type=float, default=16.0)
    args = p.parse_args(argv)
    fastffnn.ensure_loaded()
    samples = soak(args.steps, args.every)
    grown = growth_mb(samples)
    print(f"RSS after warm-up {samples[0][1]:.1f} MB, at most {samples[0][1] + grown:.1f} MB: grew {grown:.1f} MB "
          f"(limit {args.max_growth_mb} MB)")
    return 0 if grown <= args.max_growth_mb else 1


if __name__ == "__main__":
    sys.exit(main())
