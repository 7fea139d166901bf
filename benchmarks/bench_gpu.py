"""GPU throughput: FastFFNN (general and fused tiers) against eager PyTorch and torch.compile.

Usage:
    python benchmarks/bench_gpu.py [--csv out.csv] [--shapes 300x100x2,...] [--batches 1,32,1024,65536]
                                   [--compile-shapes 300x100x2,784x256x10 | --no-compile] [--quick]

Times are CUDA-event medians over repeated calls after a warm-up; each implementation, each tier of
FastFFNN included, is checked against eager before it is timed. Modes: forward (no_grad) and the
training step (zero_grad, forward, loss, backward, Adam). The eager and compiled peers use the
lecture's model with F.cross_entropy on the logits; FastFFNN uses its fused nll_loss. torch.compile
(dynamic shapes, so one compilation per shape) runs only for --compile-shapes, and its compile time is
reported separately and excluded from its timings. Each CSV row is written and flushed as soon as it
is measured, so a run cut short keeps what it measured. --quick: two shapes, batches 32 and 4096, no
torch.compile, fewer repetitions (for gpu_check.sh --quick).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastffnn

SHAPES = [(300, 100, 2), (300, 300, 5), (784, 256, 10), (1024, 1024, 16), (4096, 4096, 1000)]
BATCHES = [1, 32, 1024, 65536]
COMPILE_SHAPES = "300x100x2,784x256x10"
QUICK = {"shapes": "300x100x2,784x256x10", "batches": "32,4096"}


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


def parse_shapes(text):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None)
    p.add_argument("--batches", default=None)
    p.add_argument("--csv", default=None)
    p.add_argument("--compile-shapes", default=COMPILE_SHAPES)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    shapes = parse_shapes(args.shapes or (QUICK["shapes"] if args.quick else ",".join("x".join(map(str, s)) for s in SHAPES)))
    batches = [int(b) for b in (args.batches or (QUICK["batches"] if args.quick else ",".join(map(str, BATCHES)))).split(",")]
    compile_shapes = set() if (args.no_compile or args.quick) else set(parse_shapes(args.compile_shapes))
    iters, warmup = (20, 5) if args.quick else (50, 10)
    dev = torch.cuda.get_device_name()
    fastffnn.ensure_loaded()
    torch.backends.cuda.matmul.allow_tf32 = False
    fields = ["device", "torch", "fastffnn", "timestamp", "shape", "batch", "mode", "eager_us", "compile_us",
              "general_us", "fused_us", "compile_seconds"]
    out = open(args.csv, "w", newline="") if args.csv else None
    writer = csv.DictWriter(out, fieldnames=fields) if out else None
    if writer:
        writer.writeheader()
        out.flush()
    previous_tier = fastffnn.cuda_tier()
    print(f"{dev}, torch {torch.__version__}, fastffnn {fastffnn.__version__}; median µs per call (CUDA events)")
    print(f"{'shape':>16} {'batch':>6} {'mode':>7} {'eager':>9} {'compile':>9} {'general':>9} {'fused':>9} "
          f"{'x eager':>8} {'x compile':>9}")
    try:
        for inp, hid, out_f in shapes:
            torch.manual_seed(0)
            eager = Eager(inp, hid, out_f).cuda()
            fast = fastffnn.FastFFNN(inp, hid, out_f).cuda()
            fast.load_state_dict(eager.state_dict())
            compiled_fwd = compiled_loss = None
            compile_s = float("nan")
            if (inp, hid, out_f) in compile_shapes:
                compiled_fwd = torch.compile(eager, dynamic=True)
                compiled_loss = torch.compile(eager.loss, dynamic=True)
            for batch in batches:
                if inp * batch > 2**30:
                    continue
                x = torch.randn(batch, inp, device="cuda")
                y = torch.randint(0, out_f, (batch,), device="cuda")
                with torch.no_grad():
                    for tier in ("general", "fused"):
                        fastffnn.set_cuda_tier(tier)
                        torch.testing.assert_close(fast(x), eager(x), rtol=1e-4, atol=1e-5,
                                                   msg=lambda m, tier=tier: f"{tier} tier: {m}")
                if compiled_fwd is not None and compile_s != compile_s:
                    t0 = time.perf_counter()
                    compiled_fwd(x)
                    compiled_loss(x, y).backward()
                    torch.cuda.synchronize()
                    compile_s = time.perf_counter() - t0
                if compiled_fwd is not None:
                    with torch.no_grad():
                        torch.testing.assert_close(compiled_fwd(x), eager(x), rtol=1e-4, atol=1e-5)
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
                    t["eager"] = cuda_time(fwd(eager) if mode == "forward" else train(eager.loss, opt_e), iters, warmup)
                    if compiled_fwd is not None:
                        t["compile"] = cuda_time(fwd(compiled_fwd) if mode == "forward" else train(compiled_loss, opt_e),
                                                 iters, warmup)
                    for tier in ("general", "fused"):
                        fastffnn.set_cuda_tier(tier)
                        t[tier] = cuda_time(fwd(fast) if mode == "forward" else train(fast.nll_loss, opt_f), iters, warmup)
                    best = min(t["general"], t["fused"])
                    comp = t.get("compile", float("nan"))
                    print(f"{f'{inp},{hid},{out_f}':>16} {batch:>6} {mode:>7} {t['eager']:9.1f} {comp:9.1f} "
                          f"{t['general']:9.1f} {t['fused']:9.1f} {t['eager'] / best:8.2f} {comp / best:9.2f}")
                    sys.stdout.flush()
                    if writer:
                        writer.writerow({"device": dev, "torch": torch.__version__, "fastffnn": fastffnn.__version__,
                                         "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), "shape": f"{inp},{hid},{out_f}",
                                         "batch": batch, "mode": mode, "eager_us": t["eager"], "compile_us": comp,
                                         "general_us": t["general"], "fused_us": t["fused"],
                                         "compile_seconds": compile_s})
                        out.flush()
    finally:
        fastffnn.set_cuda_tier(previous_tier)
        if out:
            out.close()


if __name__ == "__main__":
    main()
