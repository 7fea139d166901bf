"""Where a training step's time goes: the lecture's eager step against the FastFFNN drop-in, piece by piece.

Usage:
    python benchmarks/step_breakdown.py [--shapes 300x100x2,784x256x10] [--batches 1,32] [--threads 2]

For each point it times, interleaved (fastffnn.bench.timing.measure):
zero_grad; forward + loss with autograd recording; forward + loss + backward
(the backward is the difference); torch.optim.Adam's step and
fastffnn.optim.Adam's step, each with gradients in place; and the whole step.
The model is the lecture's (eager) or FastFFNN with the same loss, so the
difference between the two columns is what the fused kernels can change and
the rest is what stays with the stock framework.
"""

from __future__ import annotations

import argparse

import torch

import fastffnn
from fastffnn.bench import peers, timing


def pieces(model, x, gold):
    stock_opt = torch.optim.Adam(model.parameters(), lr=peers.LR)
    fast_opt = fastffnn.optim.Adam(model.parameters(), lr=peers.LR)

    def fwd_loss():
        return peers.lecture_loss(model(x), gold)

    def fwd_loss_bwd():
        model.zero_grad()
        fwd_loss().backward()

    fwd_loss_bwd()  # leaves gradients for the optimizer steps

    def step():
        stock_opt.zero_grad()
        fwd_loss().backward()
        stock_opt.step()

    return {"zero_grad": lambda: model.zero_grad(set_to_none=False), "forward+loss": fwd_loss,
            "forward+loss+backward": fwd_loss_bwd, "torch.optim.Adam.step": stock_opt.step,
            "fastffnn.optim.Adam.step": fast_opt.step, "whole step (torch Adam)": step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="300x100x2,300x300x5,784x256x10")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--block-s", type=float, default=0.05)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fastffnn.ensure_loaded()
    timer = timing.BlockTimer(torch.device("cpu"), args.threads)
    print(f"{timing.device_name(torch.device('cpu'))}, {args.threads} threads, torch {torch.__version__}; "
          "median µs per call (IQR)")
    for shape in [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            point = peers.Point(shape, batch, "train", torch.device("cpu"))
            torch.manual_seed(0)
            stock = peers.LectureFFNN(*shape)
            fast = fastffnn.FastFFNN.from_module(stock)
            x, _, gold = point.make_inputs()
            timing.wait_for_idle(10)
            fns = {}
            for label, model in (("eager", stock), ("drop-in", fast)):
                for piece, fn in pieces(model, x, gold).items():
                    fns[(piece, label)] = fn
            stats = timing.measure(fns, timer, args.block_s, args.blocks)
            print(f"\n({','.join(map(str, shape))}) batch {batch}")
            print(f"  {'piece':<26}{'eager':>18}{'drop-in':>18}")
            for piece in dict.fromkeys(k[0] for k in fns):
                cells = [stats[(piece, label)] for label in ("eager", "drop-in")]
                print(f"  {piece:<26}" + "".join(f"{s.median * 1e6:>10.1f} ({s.iqr * 1e6:>5.1f})" for s in cells))
            bwd = [stats[("forward+loss+backward", lbl)].median - stats[("forward+loss", lbl)].median
                   - stats[("zero_grad", lbl)].median for lbl in ("eager", "drop-in")]
            print(f"  {'backward (difference)':<26}" + "".join(f"{b * 1e6:>10.1f}{'':8}" for b in bwd))


if __name__ == "__main__":
    main()
