"""GPU throughput: FastFFNN (general and fused tiers) against eager PyTorch and torch.compile.

Usage:
    python benchmarks/bench_gpu.py [--csv out.csv] [--shapes 300x100x2,...] [--batches 1,32,1024,65536]

Times are CUDA-event medians over repeated calls after a warm-up; each peer is
checked against eager before it is timed. Modes: forward (no_grad) and the
training step (zero_grad, forward, loss, backward, Adam). The eager and
compiled peers use the lecture's model with F.cross_entropy on the logits;
FastFFNN uses its fused nll_loss. torch.compile's compile time is reported
separately and excluded from its timings.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastffnn

SHAPES = [(300, 100, 2), (300, 300, 5), (784, 256, 10), (1024, 1024, 16), (4096, 4096, 1000)]
BATCHES = [1, 32, 1024, 65536]


class Eager(nn.Module):
    def __init__(self, inp, hid, out):
        super().__init__()
        self.V, self.g, self.W = nn.Linear(inp, hid), nn.Tanh(), nn.Linear(hid, out)

    def forward(self, x):
        return torch.softmax(self.W(self.g(self.V(x))), -1)

    def loss(self, x, y):
        return F.cross_entropy(self.W(self.g(self.V(x))), y)


def cuda_time(fn, iters=50, warmup=10):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--csv", default=None)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    dev = torch.cuda.get_device_name()
    fastffnn.ensure_loaded()
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    print(f"{dev}, torch {torch.__version__}, fastffnn {fastffnn.__version__}; median µs per call (CUDA events)")
    print(f"{'shape':>16} {'batch':>6} {'mode':>7} {'eager':>9} {'compile':>9} {'general':>9} {'fused':>9} "
          f"{'x eager':>8} {'x compile':>9}")
    for inp, hid, out in shapes:
        torch.manual_seed(0)
        eager = Eager(inp, hid, out).cuda()
        fast = fastffnn.FastFFNN(inp, hid, out).cuda()
        fast.load_state_dict(eager.state_dict())
        compiled_fwd = compiled_loss = None
        compile_s = float("nan")
        if not args.no_compile:
            compiled_fwd = torch.compile(eager, dynamic=True)
            compiled_loss = torch.compile(eager.loss, dynamic=True)
        for batch in batches:
            if inp * batch > 2**30:
                continue
            x = torch.randn(batch, inp, device="cuda")
            y = torch.randint(0, out, (batch,), device="cuda")
            with torch.no_grad():
                torch.testing.assert_close(fast(x), eager(x), rtol=1e-4, atol=1e-5)
            if compiled_fwd is not None and batch == batches[0]:
                t0 = time.perf_counter()
                compiled_fwd(x)
                compiled_loss(x, y).backward()
                torch.cuda.synchronize()
                compile_s = time.perf_counter() - t0
            opt_e = torch.optim.Adam(eager.parameters(), fused=True)
            opt_f = torch.optim.Adam(fast.parameters(), fused=True)

            def fwd(m):
                def run():
                    with torch.no_grad():
                        m(x)
                return run

            def train(loss_fn, opt):
                def run():
                    opt.zero_grad()
                    loss_fn(x, y).backward()
                    opt.step()
                return run

            for mode in ("forward", "train"):
                t = {}
                t["eager"] = cuda_time(fwd(eager) if mode == "forward" else train(eager.loss, opt_e))
                if compiled_fwd is not None:
                    t["compile"] = cuda_time(fwd(compiled_fwd) if mode == "forward" else train(compiled_loss, opt_e))
                for tier in ("general", "fused"):
                    os.environ["FASTFFNN_CUDA_TIER"] = tier
                    t[tier] = cuda_time(fwd(fast) if mode == "forward" else train(fast.nll_loss, opt_f))
                os.environ.pop("FASTFFNN_CUDA_TIER", None)
                best = min(t["general"], t["fused"])
                comp = t.get("compile", float("nan"))
                print(f"{f'{inp},{hid},{out}':>16} {batch:>6} {mode:>7} {t['eager']:9.1f} {comp:9.1f} "
                      f"{t['general']:9.1f} {t['fused']:9.1f} {t['eager'] / best:8.2f} {comp / best:9.2f}")
                rows.append({"device": dev, "torch": torch.__version__, "fastffnn": fastffnn.__version__,
                             "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "shape": f"{inp},{hid},{out}",
                             "batch": batch, "mode": mode, "eager_us": t["eager"], "compile_us": comp,
                             "general_us": t["general"], "fused_us": t["fused"], "compile_seconds": compile_s})
                sys.stdout.flush()
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
