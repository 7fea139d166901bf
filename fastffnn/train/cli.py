"""``python -m fastffnn train``: options, then data, models, training, outputs."""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys

import torch
from torch import nn

from .. import __version__
from .._build import BuildError
from .._runtime import ensure_loaded
from ..mlp import FastMLP
from ..module import FastFFNN
from . import data as datasets
from ..reference import LectureFFNN
from .loop import train
from .outputs import plot_curves, save_checkpoint, summary

EXAMPLES = """
examples:
  python -m fastffnn train                                  # sklearn's digits, 10 epochs, the lecture's batch of 1
  python -m fastffnn train --compare                        # and the stock PyTorch FFNN beside it
  python -m fastffnn train --data mine.csv --hidden 128 --epochs 20 --batch-size 32
data files: .npz with arrays X (examples, features) and y (integer labels), or .csv with one example per
row and the integer label in the last column (--label-column to choose another); a header line is skipped.
"""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m fastffnn train",
                                description="Train the lecture's classifier softmax(W g(V x)) with FastFFNN.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="a .npz or .csv dataset (default: scikit-learn's bundled digits)")
    p.add_argument("--label-column", type=int, default=-1, help="the CSV column holding the label (default: last)")
    p.add_argument("--hidden", default="64",
                   help="hidden width (default 64), or comma-separated widths for a deeper network (FastMLP), "
                        "e.g. 128,64")
    p.add_argument("--activation", choices=["tanh", "relu", "sigmoid"], default="tanh")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=1, help="examples per step; 1 is the lecture's loop (default)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev-fraction", type=float, default=0.2, help="share of the data held out as dev set")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--out", default="fastffnn-run", help="directory for the checkpoint and plot (default ./fastffnn-run)")
    p.add_argument("--compare", action="store_true", help="also train the stock PyTorch FFNN from the same weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.hidden = _widths(p, args.hidden)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        p.error(f"--lr must be a positive finite number, got {args.lr}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0 (numpy's generators take no negative seed), got {args.seed}")
    if not 0 < args.dev_fraction < 1:
        p.error(f"--dev-fraction must be between 0 and 1, got {args.dev_fraction}")
    return args


def _widths(p: argparse.ArgumentParser, text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",")]
    except ValueError:
        p.error(f"--hidden must be one width or comma-separated widths such as 128,64, got {text!r}")
    if any(w < 1 for w in widths):
        p.error(f"--hidden widths must be at least 1, got {text!r}")
    return widths


def _describe(features: int, hidden: list[int], classes: int) -> str:
    return f"{'FFNN' if len(hidden) == 1 else 'MLP'}({', '.join(map(str, [features, *hidden, classes]))})"


def _models(features: int, hidden: list[int], classes: int, activation: str, device, dtype):
    """(the stock model, its FastFFNN or FastMLP copy, how to load the checkpoint).

    One hidden width is the lecture's FFNN; more are the nn.Sequential of Linear and activation layers
    ending in Softmax(dim=-1), which FastMLP is.
    """
    if len(hidden) == 1:
        stock = LectureFFNN(features, hidden[0], classes, activation).to(device, dtype)
        nn.init.xavier_uniform_(stock.V.weight)  # "initializing to a nonzero value is critical"
        return (stock, FastFFNN.from_module(stock),
                f"{_describe(features, hidden, classes)}.load_state_dict(torch.load(path))")
    sizes = [features, *hidden, classes]
    layers = []
    for n_in, n_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(n_in, n_out), {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid}[activation]()]
    stock = nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]), nn.Softmax(dim=-1)).to(device, dtype)
    nn.init.xavier_uniform_(stock[0].weight)
    load = (f"fastffnn.FastMLP({sizes}, {activation!r}).load_state_dict(torch.load(path)), or the nn.Sequential "
            "of Linear and activation layers ending in Softmax(dim=-1)")
    return stock, FastMLP.from_module(stock), load


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise datasets.DataError(f"--device {name!r} is not a device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise datasets.DataError("--device cuda, but torch sees no GPU")
    if device.type not in ("cpu", "cuda"):
        raise datasets.DataError(f"--device {name!r}: fastffnn runs on cpu or cuda")
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except datasets.DataError as e:
        print(f"fastffnn train: error: {e}", file=sys.stderr)
        return 2
    except BuildError as e:
        print(f"fastffnn train: the native extension did not build:\n{e}", file=sys.stderr)
        return 1


def _check_out(path: str) -> None:
    """The output directory is created and probed before training, so that no trained model is lost to it."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.unlink(probe)
    except OSError as e:
        raise datasets.DataError(f"--out {path!r} cannot be written ({e.strerror}); choose another directory") from None


def _run(args) -> int:
    device = _device(args.device)
    _check_out(args.out)
    dtype = getattr(torch, args.dtype)
    data = datasets.load(args.data, args.label_column) if args.data else datasets.digits()
    train_idx, dev_idx = datasets.split(data, args.dev_fraction, args.seed)
    train_set = datasets.to_tensors(data, train_idx, device, dtype)
    dev_set = datasets.to_tensors(data, dev_idx, device, dtype)
    features = data.features.shape[1]
    print(f"fastffnn {__version__}: {data.name}: {len(data.labels)} examples, {features} features, "
          f"{data.classes} classes; {len(train_idx)} train / {len(dev_idx)} dev; "
          f"{_describe(features, args.hidden, data.classes)} {args.activation}, "
          f"batch {args.batch_size}, lr {args.lr}, {args.epochs} epochs, {device} {args.dtype}")
    ensure_loaded()

    torch.manual_seed(args.seed)
    name = _describe(features, args.hidden, data.classes)
    stock, fast, load_with = _models(features, args.hidden, data.classes, args.activation, device, dtype)
    initial = copy.deepcopy(stock)
    common = dict(classes=data.classes, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  progress=not args.no_progress)
    histories = [train(fast, "fastffnn", train_set, dev_set, **common)]
    if not all(torch.isfinite(p).all() for p in fast.parameters()):
        raise datasets.DataError(f"training diverged: the parameters are not finite after {args.epochs} epochs at "
                                 f"--lr {args.lr}; lower it (nothing was written)")
    if args.compare:
        histories.append(train(initial, "stock", train_set, dev_set, **common))

    os.makedirs(args.out, exist_ok=True)
    ckpt = os.path.join(args.out, "fastffnn.pt")
    hidden = args.hidden[0] if len(args.hidden) == 1 else args.hidden
    meta = {"dataset": data.name, "input_size": features, "hidden_size": hidden, "out_size": data.classes,
            "activation": args.activation, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
            "seed": args.seed, "dev_accuracy": histories[0].dev_accuracy[-1], "fastffnn": __version__,
            "torch": torch.__version__,
            "load_with": load_with}
    save_checkpoint(fast, ckpt, meta)
    png = os.path.join(args.out, "curves.png")
    plotted = plot_curves(png, histories, f"{data.name}: {name}, batch {args.batch_size}, {device}")
    print("\n" + summary(histories))
    loader = "the lecture's FFNN" if len(args.hidden) == 1 else "FastMLP and the stock nn.Sequential"
    print(f"\ncheckpoint: {ckpt} (a state_dict {loader} loads; how it was made: {os.path.splitext(ckpt)[0]}.json)")
    print(f"curves: {png}" if plotted else "curves: skipped (pip install matplotlib)")
    return 0
