"""FastFFNN against the lecture's eager FFNN on the CPU: forward and training step.

Usage:
    python benchmarks/compare_cpu.py [--threads 2] [--min-run-time 0.5] [--csv out.csv]

Peers, each timed in the same run with torch.utils.benchmark (median):
* eager:        the lecture's FFNN (softmax over the class dim), loss
                neg(log(probs)) . one_hot, Adam;
* fast drop-in: FastFFNN with the same loss and optimizer;
* fast fused:   FastFFNN.nll_loss (the fused network + loss op), same optimizer;
* one-call:     FastFFNN.train_step with fastffnn.optim.Adam: forward, loss,
                backward and the Adam update in one native call.
Batch 1 is a 1-D input, as in the lecture's loop. Each peer is checked against
eager before it is timed.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time

import torch
import torch.utils.benchmark as tb
from torch import nn, optim

import fastffnn
from fastffnn import FastFFNN

SHAPES = [(300, 100, 2), (300, 300, 5), (784, 256, 10), (1024, 1024, 16)]
BATCHES = [1, 32, 1024]


class EagerFFNN(nn.Module):
    """The lecture's FFNN, with the softmax over the last (class) dim so it also takes batches."""

    def __init__(self, inp, hid, out):
        super().__init__()
        self.V = nn.Linear(inp, hid)
        self.g = nn.Tanh()
        self.W = nn.Linear(hid, out)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        return self.softmax(self.W(self.g(self.V(x))))


def lecture_loss(model, x, gold):
    return torch.neg(torch.log(model(x))).mul(gold).sum()


def fused_loss(model, x, gold):
    return model.nll_loss(x, gold, reduction="sum")


def make_step(model, loss_fn, x, gold):
    opt = optim.Adam(model.parameters(), lr=1e-3)

    def step():
        model.zero_grad()
        loss = loss_fn(model, x, gold)
        loss.backward()
        opt.step()

    return step


def one_call_step(model, x, gold):
    opt = fastffnn.optim.Adam(model.parameters(), lr=1e-3)
    return lambda: model.train_step(x, gold, opt, reduction="sum")


def time_it(fn, threads, min_run_time):
    fn()
    m = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return m.median * 1e6


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-run-time", type=float, default=0.5)
    p.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    fastffnn.ensure_loaded()

    rows = []
    print(f"torch {torch.__version__}, fastffnn {fastffnn.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} threads; median microseconds per call")
    print(f"{'shape':>14} {'batch':>6} {'mode':>8} {'eager':>9} {'drop-in':>9} {'fused':>9} {'one-call':>9} "
          f"{'x drop-in':>9} {'x fused':>8} {'x 1-call':>8}")
    for inp, hid, out in shapes:
        for batch in batches:
            torch.manual_seed(0)
            eager = EagerFFNN(inp, hid, out)
            fast = FastFFNN(inp, hid, out)
            fast.load_state_dict(eager.state_dict())
            lead = () if batch == 1 else (batch,)
            x = torch.randn(*lead, inp)
            gold = nn.functional.one_hot(torch.randint(0, out, lead), out).float()

            with torch.no_grad():
                torch.testing.assert_close(fast(x), eager(x), rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(fused_loss(fast, x, gold), lecture_loss(eager, x, gold), rtol=1e-4, atol=1e-3)

            def fwd(m):
                def run():
                    with torch.no_grad():
                        m(x)
                return run

            t = {
                ("forward", "eager"): time_it(fwd(eager), args.threads, args.min_run_time),
                ("forward", "drop-in"): time_it(fwd(fast), args.threads, args.min_run_time),
                ("train", "eager"): time_it(make_step(eager, lecture_loss, x, gold), args.threads, args.min_run_time),
                ("train", "drop-in"): time_it(make_step(fast, lecture_loss, x, gold), args.threads, args.min_run_time),
                ("train", "fused"): time_it(make_step(fast, fused_loss, x, gold), args.threads, args.min_run_time),
                ("train", "one-call"): time_it(one_call_step(fast, x, gold), args.threads, args.min_run_time),
            }
            for mode in ("forward", "train"):
                e, d = t[(mode, "eager")], t[(mode, "drop-in")]
                f, o = t.get((mode, "fused")), t.get((mode, "one-call"))
                cell = lambda v, w=9: f"{v:{w}.1f}" if v else f"{'-':>{w}}"  # noqa: E731
                ratio = lambda v, w=8: f"{e / v:{w}.2f}" if v else f"{'-':>{w}}"  # noqa: E731
                print(f"{f'{inp},{hid},{out}':>14} {batch:>6} {mode:>8} {e:9.1f} {d:9.1f} {cell(f)} {cell(o)} "
                      f"{e / d:9.2f} {ratio(f)} {ratio(o)}")
                rows.append({"shape": f"{inp},{hid},{out}", "batch": batch, "mode": mode, "eager_us": e,
                             "dropin_us": d, "fused_us": f or "", "one_call_us": o or "", "device": "cpu",
                             "threads": args.threads,
                             "torch": torch.__version__, "fastffnn": fastffnn.__version__,
                             "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")})
            sys.stdout.flush()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
